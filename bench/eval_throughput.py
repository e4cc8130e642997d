"""Evaluation throughput: batched unpadded windows (this engine) vs the reference's batch-1 padded windows.

The reference evaluates one text line per forward, padded to 512 with an attention mask; we emulate it by
evaluating each window's ``seq_len`` tokens as a batch-1 forward padded to ``2 * seq_len``. Also reports the
engine's guard cost against its primary-metric cost on a noop evaluation. The last line is
``speedup=<float>``.

    python bench/eval_throughput.py [--model DIR --tokens FILE.npy]   # default: the smoke suite's fetched assets
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def _windows(tokens: Any, start: int, n: int, seq: int) -> Any:
    import torch

    from pytest_proofpack.data.windows import WindowSet, token_hash

    ids = torch.stack([torch.as_tensor(tokens[start + i * seq : start + (i + 1) * seq]) for i in range(n)])
    return WindowSet(
        tuple(f"w{start + i * seq}" for i in range(n)),
        tuple(token_hash(r.numpy().tobytes()) for r in ids),
        ids,
    )


def padded_reference(model: Any, ids: Any, pad_id: int) -> list[float]:
    """Batch-1 forwards, each row right-padded to 2x its length, labels -100 on pads (HF mean loss)."""
    import torch

    out = []
    with torch.inference_mode():
        for row in ids:
            n = row.shape[0]
            padded = torch.full((1, 2 * n), pad_id, dtype=torch.long)
            padded[0, :n] = row
            mask = torch.zeros_like(padded)
            mask[0, :n] = 1
            labels = padded.masked_fill(mask == 0, -100)
            out.append(float(model(input_ids=padded, attention_mask=mask, labels=labels).loss))
    return out


def main() -> None:
    import torch

    from pytest_proofpack.engine.config import EngineConfig
    from pytest_proofpack.engine.evaluate import evaluate, prepare_baseline
    from pytest_proofpack.engine.metric import window_losses

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model directory (default: the smoke suite's SmolLM2, fetched)")
    ap.add_argument("--tokens", default=None, help=".npy token stream (default: the smoke suite's corpus)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from smoke_assets import model_and_tokens  # bench/ is on sys.path when run as a script

    model, tokens, _ = model_and_tokens(ap, a.model, a.tokens)
    ws = _windows(tokens, 100_000, a.windows, a.seq_len)
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0

    window_losses(model, _windows(tokens, 0, 1, a.seq_len), batch_size=1, device="cpu")  # warm-up
    t = time.perf_counter()
    ours = window_losses(model, ws, batch_size=a.batch_size, device="cpu")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = padded_reference(model, ws.input_ids, pad)
    t_ref = time.perf_counter() - t
    real = ws.n_tokens
    diff = max(abs(x - y) for x, y in zip(ours, ref, strict=True) if x is not None)
    print(f"windows={a.windows} seq_len={a.seq_len} batch={a.batch_size} threads={a.threads}")
    print(f"batched_unpadded: {t_ours:.2f}s {real / t_ours:.0f} tok/s")
    print(f"batch1_padded_2x: {t_ref:.2f}s {real / t_ref:.0f} tok/s")
    print(f"max |loss difference| = {diff:.2e}")

    cfg = EngineConfig(batch_size=a.batch_size)
    half = a.windows // 2
    preview = _windows(tokens, 100_000, half, a.seq_len)
    final = _windows(tokens, 300_000, a.windows - half, a.seq_len)
    base = prepare_baseline(model, preview, final, cfg)
    rep = evaluate(model, base, preview, final, {}, cfg, context={"probes": ["rmt", "ve"]}).report
    tm = rep["timing"]
    print(
        f"noop evaluate: guards {tm['guards_s']:.2f}s vs primary metric {tm['primary_metric_s']:.2f}s "
        f"({tm['guards_over_metric']:.2f}x); per guard {rep['guards']['seconds']}"
    )
    print(f"speedup={t_ref / t_ours:.2f}")


if __name__ == "__main__":
    main()
