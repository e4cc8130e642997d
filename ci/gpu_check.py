"""GPU smoke check: inventory, worker pinning, and a Mistral-7B-shaped bf16 model's speed and memory.

``python ci/gpu_check.py`` on a CUDA machine (no network needed: the model is random-init from a config).
``python ci/gpu_check.py --dry-run`` runs the same code paths on CPU with a tiny config, so the script is
tested on machines without a GPU. Without ``--dry-run`` and without a GPU it exits 2 at once with a
clear message.
Prints one ``phase=<name> wall_s=<s> peak_gib=<g>`` line per phase and the evaluation tokens/s against the
bf16 ceiling ``peak_flops / (2 × params)``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by device-name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
MISTRAL_7B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=32000,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=1000,
)

PIN_TEST = """
import os, json
def test_pin(tmp_path_factory):
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = os.environ["PROOFPACK_PIN_OUT"]
    with open(out, "w") as f:
        json.dump({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "name": name,
                   "gpu": os.environ.get("PROOFPACK_WORKER_GPU")}, f)
"""

PIN_CONFTEST = """
import pytest
from pytest_proofpack.scheduling.gpus import detect_inventory
from pytest_proofpack.scheduling.plan import PlanSettings
from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        plugin = SchedulingPlugin(config, {}, PlanSettings(), detect_inventory())
        config.pluginmanager.register(plugin, "pp-sched")
"""


@contextmanager
def phase(name: str, cuda: bool, sink: dict[str, float]) -> Iterator[None]:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    sink[name] = wall
    print(f"phase={name} wall_s={wall:.2f} peak_gib={peak:.2f}", flush=True)


def check_inventory(dry_run: bool) -> None:
    from pytest_proofpack.scheduling.gpus import detect_inventory

    inv = detect_inventory(warn=lambda m: print(f"warning: {m}"))
    print(f"inventory: {inv.describe()}")
    if not dry_run:
        devs = inv.devices()
        assert inv.mode == "gpu" and devs, "detect_inventory() did not find the GPU"
        assert devs[0].total_mib > 1024, f"implausible GPU memory {devs[0].total_mib} MiB"


def check_pinning(dry_run: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "conftest.py").write_text(PIN_CONFTEST)
        (d / "test_pin.py").write_text(PIN_TEST)
        out = d / "pin.json"
        env = dict(os.environ, PROOFPACK_PIN_OUT=str(out), PYTHONPATH=str(ROOT))
        if dry_run:
            env["PROOFPACK_FAKE_GPUS"] = "1x80"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "1",
            "-p",
            "xdist",
            "-q",
            "-p",
            "no:cacheprovider",
            str(d),
        ]
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit("worker pinning check: pytest failed")
        import json

        got = json.loads(out.read_text())
        print(f"pinning: worker saw CUDA_VISIBLE_DEVICES={got['cvd']} device={got['name']} gpu={got['gpu']}")
        parent = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
        assert got["cvd"] == parent and got["gpu"] == "0", got


def _build(cfg: Any, device: Any, dtype: Any, cuda: bool, times: dict[str, float]) -> Any:
    """The model of ``cfg`` built directly on ``device`` in ``dtype`` (no fp32 copy of 7B weights on the device)."""
    import torch
    from transformers import MistralForCausalLM

    with phase("build", cuda, times):
        torch.manual_seed(0)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = MistralForCausalLM(cfg)
        finally:
            torch.set_default_dtype(old)
        model.eval()  # type: ignore[no-untyped-call]
    return model


def _report_ceiling(name: str, tps: float, params: int) -> None:
    """The evaluation's tokens/s against the bf16 ceiling of the device, when its peak is known."""
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        print(f"bf16 ceiling: unknown peak for {name!r}")
        return
    ceiling = peak / (2 * params)
    print(f"bf16 ceiling on {name}: {ceiling:,.0f} tokens/s (2×params FLOPs/token at {peak / 1e12:.0f} TFLOP/s)")
    print(f"fraction of ceiling: {tps / ceiling:.1%}")


def model_check(dry_run: bool, windows: int, seq_len: int, batch: int) -> None:
    import torch
    from transformers import MistralConfig

    cuda = not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = TINY if dry_run else MISTRAL_7B
    times: dict[str, float] = {}
    cfg = MistralConfig(**shape, max_position_embeddings=max(seq_len, 512))  # type: ignore[arg-type]
    model = _build(cfg, device, dtype, cuda, times)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e9:.3f}B params, dtype={dtype}, device={device}")
    gen = torch.Generator(device="cpu").manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (windows, seq_len), generator=gen).to(device)

    def run_eval() -> float:
        total = 0.0
        with torch.inference_mode():
            for i in range(0, windows, batch):
                ids = data[i : i + batch]
                out = model(input_ids=ids, labels=ids, use_cache=False)
                total += float(out.loss)
        return total

    with phase("warmup", cuda, times):
        model(input_ids=data[:1, :32], use_cache=False)
    with phase("eval", cuda, times):
        loss = run_eval()
    tokens = windows * seq_len
    tps = tokens / times["eval"]
    print(f"eval: {tokens} tokens, {tps:,.0f} tokens/s, loss_sum={loss:.3f}")
    _report_ceiling(torch.cuda.get_device_name(0) if cuda else "cpu", tps, params)
    with phase("edit_copy", cuda, times):  # an edit's fp32 copy of the largest matrix, as the memory plan assumes
        w = model.get_output_embeddings().weight
        copy = w.detach().float()
        w.data.copy_(copy.to(w.dtype))
        del copy
    if cuda:
        print(f"peak_allocated_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny config: exercise the code paths only")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.windows, args.seq_len, args.batch = min(args.windows, 4), min(args.seq_len, 32), 2
    else:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
                "run on a GPU machine or pass --dry-run",
                file=sys.stderr,
            )
            return 2
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("inventory", lambda: check_inventory(args.dry_run)),
        ("pinning", lambda: check_pinning(args.dry_run)),
        ("model", lambda: model_check(args.dry_run, args.windows, args.seq_len, args.batch)),
    ]
    for name, fn in steps:
        print(f"== {name}", flush=True)
        fn()
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
