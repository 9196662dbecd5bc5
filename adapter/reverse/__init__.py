"""The reverse path: OnCall as system of record -> the EMR (FHIR transaction, outbox file, HL7 v2).

Entry points for the composition root and the worker pool:

- `build_reverse_executor(config, store, client, oncall_base_url=..., mappings=...)` -> `ReverseExecutor`
- `ReverseExecutor.process(envelope) -> ReverseOutcome` for envelopes whose source is in `REVERSE_SOURCES`
- `ReverseExecutor.aclose()` at shutdown
- `build_emr_target(...)` -> `EMRTarget` (`deliver`, `aclose`) when a target is wanted on its own
"""
