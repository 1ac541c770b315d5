"""``farslip model list | info | download | export | convert``: released models by name, a look inside any
checkpoint, and models out to the ecosystem (open_clip's hub layout, ONNX, the Hugging Face Hub)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LIST_EPILOG = """\
examples:
  farslip model list
  farslip model info farslip2-vit-b-16
  farslip segment scene.tif --checkpoint farslip2-vit-b-16 --classes-file openearthmap
Names work wherever a checkpoint is asked for (farslip.load_model("farslip2-vit-b-16") in Python). Downloads go
through the Hugging Face cache (HF_HOME); HF_HUB_OFFLINE=1 uses the cache only. Your own entries: a YAML file in
the registry's format named by FARSLIP_MODEL_REGISTRY (see docs/models.md)."""

EXPORT_EPILOG = """\
examples:
  farslip model export farslip2-vit-b-16 out/farslip2-b16 --format open_clip-hub
  farslip model export runs/stage2/final.pt out/mine --format open_clip-hub --push my-org/my-farslip
  farslip model export farslip2-vit-b-16 out/farslip2-b16-onnx --format onnx --image-size 448
open_clip-hub: stock open_clip then loads it with create_model_and_transforms("local-dir:out/farslip2-b16") or,
after --push, "hf-hub:my-org/my-farslip". onnx: image.onnx (global embedding), image_dense.onnx (dense tokens of
the SegEarth last block + global embedding), text.onnx; each checked against PyTorch with onnxruntime."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="released models by name; inspect, convert and export checkpoints",
                       description="Released RS CLIPs by name, a look inside any checkpoint (no pickled code is "
                                   "executed), and export to open_clip's hub layout, ONNX and the Hugging Face Hub.")
    msub = p.add_subparsers(dest="model_command", metavar="{list,info,download,export,convert}")

    pl = msub.add_parser("list", help="the registry of released models (a pasteable table)", epilog=LIST_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--json", action="store_true", help="machine-readable: one object per model")
    pl.set_defaults(func=run_list)

    pi = msub.add_parser("info", help="one registry model explained, or the architecture, context length and "
                                      "shapes of a checkpoint file",
                         epilog="examples:\n  farslip model info farslip2-vit-b-16\n"
                                "  farslip model info FarSLIP2_ViT-B-16.pt",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("checkpoint", help="a registry name or a checkpoint file")
    pi.set_defaults(func=run_info)

    pd = msub.add_parser("download", help="fetch registry models into the Hugging Face cache now (e.g. before "
                                          "working offline)",
                         epilog="example:\n  farslip model download farslip2-vit-b-16 farslip2-vit-b-32",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pd.add_argument("names", nargs="+", metavar="NAME")
    pd.set_defaults(func=run_download)

    pe = msub.add_parser("export", help="write a model in open_clip's hub layout or as ONNX, optionally push it",
                         epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pe.add_argument("model", help="a registry name or any checkpoint load_model reads")
    pe.add_argument("output", help="a new (or empty) folder")
    pe.add_argument("--format", required=True, choices=["open_clip-hub", "onnx"])
    pe.add_argument("--push", metavar="REPO", help="upload the folder to this Hugging Face model repository")
    pe.add_argument("--private", action="store_true", help="with --push: create the repository private")
    pe.add_argument("--image-size", type=int, default=None, help="onnx: input size (default the model's own)")
    pe.add_argument("--attn", default="segearth", choices=["segearth", "sclip", "clearclip", "maskclip", "vanilla"],
                    help="onnx: attention of the dense tower's modified last block (default segearth)")
    _add_arch_args(pe)
    pe.set_defaults(func=run_export)

    pc = msub.add_parser("convert", help="write a self-describing farslip checkpoint (.safetensors or .pt)",
                         epilog="example:\n  farslip model convert RemoteCLIP-ViT-B-32.pt remoteclip_b32.safetensors "
                                "--model ViT-B-32", formatter_class=argparse.RawDescriptionHelpFormatter)
    pc.add_argument("checkpoint")
    pc.add_argument("output")
    _add_arch_args(pc)
    pc.set_defaults(func=run_convert)


def _add_arch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="arch", default=None,
                   help="architecture (a registry name knows it; otherwise read off the shapes if omitted)")
    p.add_argument("--no-quick-gelu", action="store_true",
                   help="plain GELU (default: the registry's or the checkpoint's setting, else QuickGELU)")


def _quick_gelu(args) -> bool | None:
    return False if args.no_quick_gelu else None


def run_list(args) -> int:
    from ..models.registry import all_entries, format_table

    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(e) for e in all_entries().values()], indent=2))
        return 0
    print(format_table())
    print("\nfarslip model info NAME explains one; use a name as --checkpoint NAME or farslip.load_model(NAME).")
    return 0


def run_info(args) -> int:
    from ..models.registry import describe, find_entry, get_entry

    entry = find_entry(args.checkpoint)
    if entry is None and Path(args.checkpoint).suffix == "" and not Path(args.checkpoint).exists():
        entry = get_entry(args.checkpoint)  # neither a file nor a name: the error lists the names
    if entry is not None:
        print(describe(entry))
        print(f"  cached        {_cached_path(entry) or 'no (downloaded on first use)'}")
        return 0
    return _checkpoint_info(args.checkpoint)


def _cached_path(entry) -> str | None:
    if entry.hub is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.hub.repo, entry.hub.file, revision=entry.hub.revision)
    return found if isinstance(found, str) else None


def _checkpoint_info(path: str) -> int:
    from ..models.checkpoint_io import read_checkpoint
    from ..models.loading import architectures_fitting, describe_state_dict, register_model_configs
    from ..models.long_text import fold_long_text_state

    register_model_configs()
    state, meta = read_checkpoint(path)
    long_pair = "positional_embedding_res" in state
    state = fold_long_text_state(state)
    facts = describe_state_dict(state)
    params = sum(t.numel() for t in state.values())
    print(f"checkpoint      {path}")
    described = f"{meta['arch']} (quick_gelu={meta.get('quick_gelu')}, config embedded)" if meta else None
    print(f"self-describing {described or 'no (foreign checkpoint: pass --model or let the shapes tell)'}")
    print(f"parameters      {params / 1e6:.1f} M in {len(state)} tensors")
    for k, v in facts.items():
        print(f"{k:<15} {v}")
    print(f"long-text pair  {'yes (folded on load)' if long_pair else 'no'}")
    print(f"fits            {', '.join(architectures_fitting(state)[:10]) or 'no registered architecture'}")
    return 0


def run_download(args) -> int:
    from ..models.hub import fetch_weights
    from ..models.registry import get_entry

    for name in args.names:
        entry = get_entry(name)
        if entry.open_clip_tag:
            from ..models.loading import load_model

            load_model(entry.name)  # open_clip downloads and caches its own tags
            print(f"{entry.name}: open_clip {entry.arch}/{entry.open_clip_tag} cached")
            continue
        print(f"{entry.name}: {fetch_weights(entry)}")
    return 0


def run_export(args) -> int:
    from ..models.export import check_export_folder, export_onnx, export_open_clip_hub, push_folder
    from ..models.loading import load_model

    check_export_folder(args.output, args.model)
    model, *_ = load_model(args.arch, args.model, quick_gelu=_quick_gelu(args))
    model.eval()
    if args.format == "open_clip-hub":
        out = export_open_clip_hub(model, args.output, repo_id=args.push)
        print(f"wrote {out} (open_clip_config.json, open_clip_model.safetensors, README.md): "
              f'open_clip.create_model_and_transforms("local-dir:{out}")')
    else:
        summary = export_onnx(model, args.output, image_size=args.image_size, attn=args.attn)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in summary["max_abs_diff"].items())
        print(f"wrote {args.output}: image.onnx, image_dense.onnx, text.onnx for {summary['image_size']} px input "
              f"({summary['grid']}x{summary['grid']} patches, {summary['context_length']} text tokens); "
              f"onnxruntime vs PyTorch max |diff|: {diffs}")
    if args.push:
        url = push_folder(args.output, args.push, private=args.private)
        hint = (f' -- open_clip.create_model_and_transforms("hf-hub:{args.push}")'
                if args.format == "open_clip-hub" else "")
        print(f"pushed to {args.push}: {url}{hint}")
    return 0


def run_convert(args) -> int:
    from ..core.files import refuse_overwriting_inputs
    from ..models.loading import load_model, save_model

    refuse_overwriting_inputs([args.output], [args.checkpoint], hint="give the converted checkpoint another name")
    model, *_ = load_model(args.arch, args.checkpoint, quick_gelu=_quick_gelu(args))
    path = save_model(model, args.output)
    print(f"wrote {path} ({model.farslip_arch}, context {model.context_length}); "
          f"load it with farslip.load_model(checkpoint='{path}')")
    return 0
