"""A checkpoint scenario on a worker: the user's own weights, swapped into the loaded baseline and judged.

The baseline, its windows, calibrated preset and guards are the model's own, as for any scenario. The subject is
resolved and checked against the baseline's config and tokenizer before a weight is read
(:mod:`pytest_proofpack.models.subject`), then copied tensor by tensor into the baseline model in place
(:mod:`pytest_proofpack.models.subject_swap`): one model in memory, evaluated against the cached baseline
statistics, restored bit for bit afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.edits.change import AppliedChange
    from pytest_proofpack.runtime import ModelRuntime

__all__ = ["apply_checkpoint"]


def apply_checkpoint(case: Case, runtime: ModelRuntime) -> AppliedChange:
    """Swap the subject of ``case``'s checkpoint scenario into ``runtime.model``; the change's metadata holds the
    subject's provenance under ``subject`` (source, digest, file hashes, compatibility). Raises
    :class:`~pytest_proofpack.errors.ModelLoadError` or :class:`~pytest_proofpack.errors.MissingAssetError`
    with one line when the subject cannot be read or does not fit the baseline; the model is then untouched."""
    from pytest_proofpack.models.subject import parse_subject, resolve_subject
    from pytest_proofpack.models.subject_swap import swap_in_subject

    where = f"scenario {case.scenario.id}: generation.subject"
    spec = parse_subject(case.scenario.generation.get("subject"), Path.cwd(), where)
    loaded = runtime.loaded
    vocab = _vocab(loaded.tokenizer)
    subject = resolve_subject(spec, loaded.local_dir, vocab, cache=runtime.ctx.cache,
                              allow_net=runtime.ctx.options.net, device=runtime.engine.device)
    provenance: dict[str, Any] = {**subject.provenance, "baseline_revision": loaded.revision,
                                  "compatibility": "architecture, layer count, hidden size and vocabulary match"}
    return swap_in_subject(runtime.model, subject.weights,
                           {"spec": f"checkpoint:{spec.describe()}", "subject": provenance})


def _vocab(tokenizer: Any) -> dict[str, int] | None:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    try:
        vocab = get_vocab() if callable(get_vocab) else None
    except (NotImplementedError, ValueError, TypeError):
        return None
    return dict(vocab) if isinstance(vocab, dict) else None
