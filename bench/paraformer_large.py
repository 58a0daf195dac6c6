"""A Paraformer with random weights at Paraformer-large's size, in FunASR's model-folder format.

Built from FunASR's own classes the way tests/tiny_paraformer.py builds its tiny one (same component
names and options), with the dimensions of paraformer-large (vocab8404): encoder output 512,
4 attention heads, 2048 linear units, 50 encoder blocks, 16 decoder blocks, 8404 tokens. It knows no
speech; it costs what the real model costs per batch, which is what a throughput benchmark needs.
``small=True`` keeps the widths but only 2 + 1 blocks, for a quick CPU dry run of the same plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

LARGE = {"d_model": 512, "heads": 4, "units": 2048, "enc_blocks": 50, "dec_blocks": 16, "vocab": 8404}
SMALL = {**LARGE, "enc_blocks": 2, "dec_blocks": 1}


def _tokens(n: int) -> list[str]:
    # <blank>, <s>, </s> first (ids hard-wired in the model), <unk> last, CJK characters between,
    # like paraformer-zh's character vocabulary
    head, tail = ["<blank>", "<s>", "</s>"], ["<unk>"]
    return head + [chr(0x4E00 + i) for i in range(n - len(head) - len(tail))] + tail


def build(dest: Path, small: bool = False) -> Path:
    """Write config.yaml, model.pt, am.mvn, tokens.json into dest (kept if already complete)."""
    import torch
    import yaml

    from tests.tiny_paraformer import LFR_M, N_MELS, _config, _write_cmvn

    dims = SMALL if small else LARGE
    dest = Path(dest)
    stamp = dest / "dims.json"
    if stamp.exists() and json.loads(stamp.read_text()) == dims and (dest / "model.pt").exists():
        return dest
    from funasr.register import tables  # imported late: importing funasr takes seconds

    dest.mkdir(parents=True, exist_ok=True)
    tokens = _tokens(dims["vocab"])
    config = _config(len(tokens), seaco=False)
    d = dims["d_model"]
    config["encoder_conf"].update(output_size=d, attention_heads=dims["heads"], linear_units=dims["units"],
                                  num_blocks=dims["enc_blocks"])
    config["decoder_conf"].update(attention_heads=dims["heads"], linear_units=dims["units"],
                                  num_blocks=dims["dec_blocks"], att_layer_num=dims["dec_blocks"])
    config["predictor_conf"].update(idim=d)
    torch.manual_seed(0)
    model = tables.model_classes.get(config["model"])(
        **config["model_conf"],
        **{k: config[k] for part in ("encoder", "decoder", "predictor") for k in (part, part + "_conf")},
        input_size=N_MELS * LFR_M,
        vocab_size=len(tokens),
    )
    with torch.no_grad():
        # as in tests/tiny_paraformer.py: make the random CIF head fire about once per ~4 encoder
        # frames (a token per ~240 ms, like speech), keep the decoder off blank/sos/eos
        model.predictor.cif_output.weight.mul_(0.5)
        model.predictor.cif_output.bias.fill_(-1.2)
        model.decoder.output_layer.bias[:3] = -10.0
        model.predictor.cif_output2.bias.fill_(0.0)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dest / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    _write_cmvn(dest / "am.mvn", N_MELS * LFR_M)
    torch.save(model.state_dict(), dest / "model.pt")
    stamp.write_text(json.dumps(dims))
    return dest


def n_params(dest: Path) -> int:
    import torch

    return sum(t.numel() for t in torch.load(Path(dest) / "model.pt", map_location="cpu").values())
