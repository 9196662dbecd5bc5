"""FHIRPath as a mapping source language (fhirpathpy), compiled and checked at load.

fhirpathpy's parser recovers silently from syntax errors, so expressions are first parsed here
with an ANTLR error listener that raises, then compiled once and tried on an empty resource to
surface wrong function arities before any message arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapter.errors import FHIRInputError
from adapter.mapping.languages import Compiled, Value, json_payload
from adapter.mapping.schema import Match

__all__ = ["FhirPath", "check_syntax"]


def check_syntax(text: str) -> None:
    """Raise ValueError when `text` is not a complete FHIRPath expression."""
    from antlr4 import CommonTokenStream, InputStream, Token
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class _Raise(ErrorListener):
        def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int,
                        msg: str, e: Any) -> None:
            raise ValueError(f"FHIRPath syntax error at column {column + 1}: {msg}")

    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_Raise())
    parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        raise ValueError(f"FHIRPath: unexpected text after column {parser.getCurrentToken().column}")


class FhirPath:
    name = "fhir"

    def __init__(self, model: str = "r4") -> None:
        from fhirpathpy.models import models
        self._model = models[model]

    def keys(self, match: Match) -> list[str]:
        assert match.fhir is not None
        return list(match.fhir.resource)

    def _compile(self, text: str, match: Match) -> Callable[[Any], list[Any]]:
        from fhirpathpy import compile as fp_compile

        check_syntax(text)
        compiled = fp_compile(text, self._model)

        def fn(resource: Any) -> list[Any]:
            return list(compiled(resource, None))
        assert match.fhir is not None
        for resource in match.fhir.resource:
            try:
                fn({"resourceType": resource})
            except Exception as exc:  # fhirpathpy raises bare Exception for arity/function errors
                raise ValueError(f"FHIRPath {text!r} cannot be evaluated: {exc}") from None
        return fn

    def compile(self, text: str, match: Match) -> Compiled:
        fn = self._compile(text, match)

        def read(resource: Any) -> Value:
            try:
                items = fn(resource)
            except Exception as exc:  # the one place fhirpathpy errors are translated
                raise FHIRInputError(f"FHIRPath {text!r} failed: {type(exc).__name__}",
                                     expression=text) from None
            if not items:
                return ""
            return items[0] if len(items) == 1 else list(items)
        return Compiled(text, read, False)

    def compile_group(self, text: str, match: Match) -> Callable[[Any], list[Any]]:
        fn = self._compile(text, match)

        def groups(resource: Any) -> list[Any]:
            try:
                return [n for n in fn(resource) if isinstance(n, dict)]
            except Exception as exc:
                raise FHIRInputError(f"FHIRPath {text!r} failed: {type(exc).__name__}",
                                     expression=text) from None
        return groups

    def parse(self, kind: str, payload: str | bytes) -> tuple[Any, str]:
        doc = json_payload(payload, FHIRInputError)
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise FHIRInputError("the payload is not a FHIR resource (no resourceType)",
                                 expression="resourceType")
        return doc, kind or doc["resourceType"]
