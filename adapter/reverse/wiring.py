"""Building the reverse path from the configuration (for the composition root).

    executor = build_reverse_executor(config, store, client, oncall_base_url=base_url,
                                      mappings=runtime.mappings.get)
    ...   # the worker pool hands it every envelope whose source is in REVERSE_SOURCES
    await executor.aclose()   # at shutdown: closes the EMR target (HTTP pool, held MLLP connection)

Credentials for a FHIR target are the EMR FHIR credentials already configured for the FHIR
listener (`[fhir] emr_token` or `emr_username` + `emr_password`, secrets from env or file), and
`[emr] fhir_base_url` defaults to `[fhir] emr_base_url`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapter.config import Config
from adapter.reverse.executor import ReverseExecutor
from adapter.reverse.targets import build_emr_target
from adapter.store.base import Store

__all__ = ["build_reverse_executor"]


def build_reverse_executor(config: Config, store: Store, client: Any, *, oncall_base_url: str,
                           mappings: Callable[[], Any]) -> ReverseExecutor:
    emr, fhir = config.emr, config.fhir
    password = config.secret("fhir", "emr_password")
    basic = (fhir.emr_username, password) if fhir.emr_username and password else None
    target = build_emr_target(
        target=emr.target, oncall_base_url=oncall_base_url,
        fhir_base_url=emr.fhir_base_url or fhir.emr_base_url,
        outbox_dir=emr.outbox_dir, mllp_host=emr.mllp_host, mllp_port=emr.mllp_port,
        bearer_token=None if basic else config.secret("fhir", "emr_token"), basic=basic,
        emr_identifier_system=fhir.patient_identifier_system)
    return ReverseExecutor(store, client, target, mappings=mappings, oncall_base_url=oncall_base_url,
                           emr_identifier_system=fhir.patient_identifier_system,
                           emr_id_label=config.oncall.emr_id_field_label)
