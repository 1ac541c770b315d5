"""``farslip model info | convert``: look inside a checkpoint; turn any form into a self-describing file."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect or convert checkpoints (any form load_model reads)",
                       description="Inspect or convert CLIP checkpoints without executing pickled code.")
    msub = p.add_subparsers(dest="model_command", metavar="{info,convert}")
    pi = msub.add_parser("info", help="architecture, context length and shapes of a checkpoint",
                         epilog="example: farslip model info FarSLIP2_ViT-B-16.pt")
    pi.add_argument("checkpoint")
    pi.set_defaults(func=run_info)
    pc = msub.add_parser("convert", help="write a self-describing farslip checkpoint (.safetensors or .pt)",
                         epilog="example: farslip model convert RemoteCLIP-ViT-B-32.pt remoteclip_b32.safetensors "
                                "--model ViT-B-32")
    pc.add_argument("checkpoint")
    pc.add_argument("output")
    pc.add_argument("--model", dest="arch", default=None, help="architecture (read off the shapes if omitted)")
    pc.add_argument("--no-quick-gelu", action="store_true", help="the weights were trained with plain GELU")
    pc.set_defaults(func=run_convert)


def run_info(args) -> int:
    from ..models.checkpoint_io import read_checkpoint
    from ..models.loading import architectures_fitting, describe_state_dict, register_model_configs
    from ..models.long_text import fold_long_text_state

    register_model_configs()
    state, meta = read_checkpoint(args.checkpoint)
    long_pair = "positional_embedding_res" in state
    state = fold_long_text_state(state)
    facts = describe_state_dict(state)
    params = sum(t.numel() for t in state.values())
    print(f"checkpoint      {args.checkpoint}")
    described = f"{meta['arch']} (quick_gelu={meta.get('quick_gelu')}, config embedded)" if meta else None
    print(f"self-describing {described or 'no (foreign checkpoint: pass --model or let the shapes tell)'}")
    print(f"parameters      {params / 1e6:.1f} M in {len(state)} tensors")
    for k, v in facts.items():
        print(f"{k:<15} {v}")
    print(f"long-text pair  {'yes (folded on load)' if long_pair else 'no'}")
    print(f"fits            {', '.join(architectures_fitting(state)[:10]) or 'no registered architecture'}")
    return 0


def run_convert(args) -> int:
    from ..core.files import refuse_overwriting_inputs
    from ..models.loading import load_model, save_model

    refuse_overwriting_inputs([args.output], [args.checkpoint], hint="give the converted checkpoint another name")
    model, *_ = load_model(args.arch, args.checkpoint, quick_gelu=not args.no_quick_gelu)
    path = save_model(model, args.output)
    print(f"wrote {path} ({model.farslip_arch}, context {model.context_length}); "
          f"load it with farslip.load_model(checkpoint='{path}')")
    return 0
