"""Build a tiny random-weight CT-Transformer punctuation model in FunASR's local model-folder format.

Same component names and options as FunASR's ct-punc (punc_ct-transformer_zh-cn-common-vocab272727)
config.yaml, with tiny sizes. With random weights the punctuation it restores is arbitrary but
deterministic, which is all the tests need: they check that cues end where the model put its marks.
"""

from __future__ import annotations

import json
import pathlib

import torch
import yaml

from tests.tiny_paraformer import _CJK, _EN

# ct-punc's classes, in its order: 0 unknown, 1 no mark, then comma, full stop, question mark, enumeration
PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]
D_MODEL = 32


def _tokens() -> list[str]:
    return ["<s>", "</s>"] + list(dict.fromkeys(_CJK)) + [w.replace("@@", "") for w in _EN] + ["<unk>"]


def _config(d_model: int, blocks: int, heads: int, units: int) -> dict:
    return {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": d_model,
            "att_unit": d_model,
            "dropout_rate": 0.1,
            "punc_list": PUNC_LIST,
            "punc_weight": [1.0] * len(PUNC_LIST),
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": d_model,
            "output_size": d_model,
            "attention_heads": heads,
            "linear_units": units,
            "num_blocks": blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }


def build_tiny_ct_punc(dest: pathlib.Path, seed: int = 0, vocab: list[str] | None = None,
                       d_model: int = D_MODEL, blocks: int = 2, heads: int = 2, units: int = 64,
                       sentence_end_bias: float = 0.0) -> pathlib.Path:
    """Write config.yaml, model.pt and tokens.json into dest and return dest. The size arguments build
    a model as large as the real one (256, 4 blocks, 8 heads, 1024 units, 272,727 tokens) for timing;
    a negative sentence_end_bias makes sentences long (-10: none but the closing one)."""
    from funasr.register import tables  # imported late: importing funasr takes seconds

    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokens = vocab or _tokens()
    config = _config(d_model, blocks, heads, units)
    torch.manual_seed(seed)
    model = tables.model_classes.get("CTTransformer")(
        encoder=config["encoder"], encoder_conf=config["encoder_conf"], vocab_size=len(tokens),
        **config["model_conf"],
    )
    with torch.no_grad():
        # the unknown class is never a real answer; the rest stay random, so every mark occurs
        model.decoder.bias[0] = -10.0
        # no mark is the usual answer, so sentences run several words, as in speech
        model.decoder.bias[1] += 1.0
        model.decoder.bias[3:5] += sentence_end_bias
    (dest / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dest / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    torch.save(model.state_dict(), dest / "model.pt")
    return dest


if __name__ == "__main__":
    import sys

    print(build_tiny_ct_punc(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_ct_punc")))
