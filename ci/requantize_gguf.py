"""Re-quantize a GGUF file to another quantization type: a local checkpoint subject for ``proofpack certify``.

    python ci/requantize_gguf.py SRC.gguf OUT.gguf --type Q8_0

Every quantized tensor of SRC is dequantized and quantized again to ``--type`` with the ``gguf`` package's own
quantizers (``gguf.quants``); float tensors (norms) and tensors whose rows do not fit the type's block size are
copied unchanged. The metadata (tokenizer included) is copied, with ``general.file_type`` set to the new type, so
the result reads as that type's build of the same model. Prints one line per type written. Exit 0, or 2 with one
line on a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

#: The types this script writes (those ``gguf.quants.quantize`` implements without an importance matrix).
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16")


def requantize(src: Path, out: Path, type_name: str) -> Counter[str]:
    """Write ``src`` re-quantized to ``type_name`` into ``out`` (atomically); returns the tensor count per type."""
    import gguf
    import numpy as np

    target = gguf.GGMLQuantizationType[type_name]
    reader = gguf.GGUFReader(str(src), "r")
    arch = str(bytes(reader.fields[gguf.Keys.General.ARCHITECTURE].parts[-1]), "utf-8")
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(getattr(gguf.LlamaFileType, f"MOSTLY_{type_name}", getattr(gguf.LlamaFileType,
                                                                                  f"ALL_{type_name}", 0)))
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    written: Counter[str] = Counter()
    block = gguf.GGML_QUANT_SIZES[target][0]
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) and len(tensor.shape) == 1:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=kind)
            written[kind.name] += 1
            continue
        values = gguf.quants.dequantize(np.asarray(tensor.data), kind).astype(np.float32)
        if values.shape[-1] % block:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=kind)
            written[kind.name] += 1
            continue
        writer.add_tensor(tensor.name, gguf.quants.quantize(values, target), raw_dtype=target)
        written[target.name] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the GGUF file to re-quantize")
    parser.add_argument("out", type=Path, help="the GGUF file to write")
    parser.add_argument("--type", default="Q8_0", choices=TYPES, help="the quantization type to write")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        print(f"requantize_gguf: {args.src}: no such file", file=sys.stderr)
        return 2
    if args.out.resolve() == args.src.resolve():
        print("requantize_gguf: OUT must differ from SRC", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = requantize(args.src, args.out, args.type)
    for name, count in sorted(written.items()):
        print(f"{args.out}: {count} tensors {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
