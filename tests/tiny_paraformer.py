"""Build a tiny random-weight BiCif- (or SeACo-) Paraformer in FunASR's local model-folder format.

The model knows nothing about speech; it exists so tests can drive the real FunASR loading,
feature, batching and timestamp code on CPU in seconds, with no network and no downloaded weights.
"""

from __future__ import annotations

import json
import pathlib

import torch
import yaml

# Real Paraformer vocabularies start with <blank>, <s>, </s> (ids 0-2 are hard-wired in the
# model as blank/sos/eos) and end with <unk>; mixing CJK characters with "@@" BPE pieces
# mirrors paraformer-zh, which writes Mandarin as characters and English as pieces.
_CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你说年想问房新区海滨广州市产介协分析甚至现交易几乎停滞情况"
_EN = ["ask", "not", "what", "your", "coun@@", "try", "can", "do", "for", "you", "and", "so", "my", "fel@@", "low"]
_SPECIAL_HEAD = ["<blank>", "<s>", "</s>"]
_SPECIAL_TAIL = ["<unk>"]

# Config sections that become constructor arguments (each with its *_conf).
_PARTS = ("encoder", "decoder", "predictor", "seaco_decoder")
D_MODEL = 32
N_MELS = 80
LFR_M, LFR_N = 7, 6


def _tokens() -> list[str]:
    cjk = list(dict.fromkeys(_CJK))  # keep order, drop repeats
    return _SPECIAL_HEAD + cjk + _EN + _SPECIAL_TAIL


def _decoder_conf() -> dict:
    return {
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 2,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": 2,
        "kernel_size": 11,
        "sanm_shfit": 0,
    }


def _config(vocab_size: int, seaco: bool) -> dict:
    # Same component names and options as paraformer-zh's (or SeACo-Paraformer's) config.yaml,
    # with tiny sizes.
    config = {
        "model": "SeacoParaformer" if seaco else "BiCifParaformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": D_MODEL,
            "attention_heads": 2,
            "linear_units": 64,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": _decoder_conf(),
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": D_MODEL,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
            "smooth_factor2": 0.25,
            "noise_threshold2": 0.01,
            "upsample_times": 3,  # FunASR's timestamp code assumes 3x upsampling
            "use_cif1_cnn": False,
            "upsample_type": "cnn_blstm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
            "dither": 0.0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }
    if seaco:
        config["model_conf"].update(
            inner_dim=D_MODEL,
            bias_encoder_type="lstm",
            NO_BIAS=vocab_size - 1,  # <unk>: the "no hotword here" class of the bias decoder
        )
        config["seaco_decoder"] = "ParaformerSANMDecoder"
        # The bias decoder attends over hotword embeddings and hands hidden states (not token
        # scores) to hotword_output_layer, hence no input/output layers.
        config["seaco_decoder_conf"] = {
            **_decoder_conf(),
            "num_blocks": 1,
            "att_layer_num": 1,
            "wo_input_layer": True,
            "use_output_layer": False,
        }
    return config


def _write_cmvn(path: pathlib.Path, dim: int) -> None:
    # Kaldi nnet text format as in real am.mvn; a rough global shift/scale for log-mel
    # features (computed on int16-scaled audio) keeps the random encoder's inputs near unit range.
    shift = " ".join(["-10.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )


def build_tiny_paraformer(dest: pathlib.Path, seaco: bool = False, seaco_layers: int = 1) -> pathlib.Path:
    """Write config.yaml, model.pt, am.mvn and tokens.json into dest and return dest.

    seaco=True builds a SeACo-Paraformer (hotword biasing) instead of a BiCif-Paraformer, plus
    the seg_dict FunASR uses to split hotwords into vocabulary tokens; seaco_layers=6 gives its bias
    decoder the depth FunASR needs for lists of more than 50 hotwords.
    """
    from funasr.register import tables  # imported late: importing funasr takes seconds

    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokens = _tokens()
    config = _config(len(tokens), seaco)
    if seaco and seaco_layers != 1:
        # more than 50 hotwords take FunASR's filter pass (forward_asf6), which reads the bias decoder's
        # first six layers, as the real SeACo-Paraformer has them
        config["seaco_decoder_conf"].update(num_blocks=seaco_layers, att_layer_num=seaco_layers)

    torch.manual_seed(0)
    model_class = tables.model_classes.get(config["model"])
    model = model_class(
        **config["model_conf"],
        **{k: config[k] for part in _PARTS for k in (part, part + "_conf") if k in config},
        input_size=N_MELS * LFR_M,  # AutoModel takes these two from the frontend and tokens.json
        vocab_size=len(tokens),
    )

    with torch.no_grad():
        # A random CIF head fires almost never or on every frame; a small negative bias
        # makes it integrate to about one token per ~4 encoder frames (~240 ms), like speech.
        model.predictor.cif_output.weight.mul_(0.5)
        model.predictor.cif_output.bias.fill_(-1.2)
        # Keep the decoder from choosing blank/sos/eos, which are dropped from the text.
        model.decoder.output_layer.bias[:3] = -10.0
        if seaco:
            model.hotword_output_layer.bias[:3] = -10.0
        # The timestamp head only needs to be positive; FunASR rescales it to the token count.
        model.predictor.cif_output2.bias.fill_(0.0)

    (dest / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dest / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    _write_cmvn(dest / "am.mvn", N_MELS * LFR_M)
    if seaco:
        lines = [f"{t} {t}" for t in tokens if not t.startswith("<")]
        (dest / "seg_dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
    torch.save(model.state_dict(), dest / "model.pt")
    return dest


if __name__ == "__main__":
    import sys

    print(build_tiny_paraformer(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_paraformer")))
