#!/usr/bin/env python3
"""Golden-fixture generator for edgevlm's parity tests.

Builds two tiny random-weight vision-language models with transformers' own classes
(Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration), a real byte-level BPE
tokenizer trained with `tokenizers`, the real SmolVLM chat template and the PIL-based image
processors, saves them in the Hugging Face layout, and writes reference tensors computed by
transformers on the CPU in float32 (eager attention, deterministic algorithms).

The layout it writes is specified in /work/notes/fixtures.md (copied into train/README.md):

  <out>/images/img_a.jpg, img_b.png, img_c.png        procedurally drawn, text-free
  <out>/tiny-idefics3/                                 BF16 weights, one model.safetensors, tied head
  <out>/tiny-smolvlm/                                  F32 weights, sharded + index json, untied head
  <out>/tokenizer_cases.json                           encode/decode cases from `tokenizers`
  <out>/chat_template_cases.json                       apply_chat_template(tokenize=False) cases
  <out>/preprocess_cases.json + golden/preprocess.safetensors
  <out>/golden/<model>_case<k>.safetensors + .json     per-stage activations, logits, greedy tokens

Run on a machine with python3, torch, transformers 5.x, tokenizers, safetensors, PIL, numpy:

  PYTHONUNBUFFERED=1 python3 train/make_golden.py --out tests/fixtures

Everything is seeded; running it twice with the same library versions gives the same files.
"""

import argparse
import copy
import inspect
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import torch

# ---------------------------------------------------------------------------------------------
# Constants shared by both models
# ---------------------------------------------------------------------------------------------

# The chat template shipped by HuggingFaceTB/SmolVLM-256M-Instruct (tokenizer_config.json and
# chat_template.json). Note the real newline after <end_of_utterance>.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Special tokens learned first by the BPE trainer (ids 0, 1, 2 as in SmolLM2).
TRAINER_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Special tokens appended after the BPE vocabulary (as SmolVLM appends its image tokens).
IMAGE_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
ROW_COL_SPECIALS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
NON_SPECIAL_ADDED = "<scene>"

BPE_VOCAB = 1500          # trainer target (includes the 3 trainer specials and the 256-byte alphabet)
IMAGE_SEQ_LEN = 16        # (64 / 8)^2 / 2^2
TILE = 64                 # vision image_size and processor max_image_size
LONGEST_EDGE = 192        # processor size: up to 3x3 tiles + a global view
MARGIN_MIN = 5e-3         # wanted top-1/top-2 logit margin at every greedy step (spec asks > 1e-3)
MARGIN_FLOOR = 1e-3       # hard floor
N_GREEDY = 16

IMAGES = {
    "img_a": "images/img_a.jpg",   # 150x100 RGB JPEG (q90)
    "img_b": "images/img_b.png",   # 90x170 RGBA PNG with partial transparency
    "img_c": "images/img_c.png",   # 200x50 greyscale PNG (wide, downscaled to 192x48)
}


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def draw_images(out: Path):
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(7)

    # img_a: a road scene, 150x100 RGB. Sky gradient, road trapezoid, lane dashes, car, tree, sun.
    w, h = 150, 100
    y = np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))
    x = np.ones((h, 1)) * np.linspace(0.0, 1.0, w)[None, :]
    sky = np.stack([60 + 120 * y + 20 * x, 110 + 100 * y, 200 + 40 * y - 30 * x], axis=-1)
    sky = sky + rng.normal(0, 4, size=sky.shape)
    a = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(a)
    d.rectangle([0, 55, w, h], fill=(70, 120, 60))                      # grass
    d.polygon([(60, 55), (90, 55), (140, 100), (10, 100)], fill=(90, 90, 95))  # road
    for k in range(4):                                                   # lane dashes
        t0, t1 = 0.1 + 0.22 * k, 0.2 + 0.22 * k
        d.polygon([(75 - 2 * t0, 55 + 45 * t0), (75 + 2 * t0, 55 + 45 * t0),
                   (75 + 3 * t1, 55 + 45 * t1), (75 - 3 * t1, 55 + 45 * t1)], fill=(240, 240, 230))
    d.rectangle([88, 70, 118, 84], fill=(200, 30, 40))                   # car body
    d.rectangle([94, 63, 112, 71], fill=(170, 20, 30))                   # car roof
    d.ellipse([91, 80, 99, 88], fill=(15, 15, 15))                       # wheels
    d.ellipse([107, 80, 115, 88], fill=(15, 15, 15))
    d.polygon([(20, 58), (32, 20), (44, 58)], fill=(30, 100, 40))       # tree
    d.rectangle([30, 58, 34, 66], fill=(90, 60, 30))
    d.ellipse([118, 6, 138, 26], fill=(250, 220, 80))                    # sun
    a.save(out / IMAGES["img_a"], format="JPEG", quality=90)

    # img_b: a traffic light, 90x170 RGBA with an alpha gradient and semi-transparent shapes.
    w, h = 90, 170
    y = np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))
    x = np.ones((h, 1)) * np.linspace(0.0, 1.0, w)[None, :]
    rgba = np.stack([40 + 180 * x, 200 - 120 * y, 90 + 60 * x * y, 40 + 215 * y], axis=-1)
    b = Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA")
    d = ImageDraw.Draw(b)
    d.rectangle([25, 15, 65, 125], fill=(25, 25, 25, 255))
    d.ellipse([32, 22, 58, 48], fill=(230, 30, 30, 255))
    d.ellipse([32, 57, 58, 83], fill=(240, 190, 20, 160))
    d.ellipse([32, 92, 58, 118], fill=(30, 200, 60, 90))
    d.rectangle([42, 125, 48, 170], fill=(120, 120, 120, 220))
    d.polygon([(0, 170), (30, 140), (60, 170)], fill=(250, 250, 250, 40))
    b.save(out / IMAGES["img_b"], format="PNG")

    # img_c: a crosswalk strip, 200x50 greyscale.
    w, h = 200, 50
    g = np.tile(np.linspace(30, 200, w)[None, :], (h, 1))
    g = g + 25 * np.sin(np.arange(h)[:, None] / 4.0)
    c = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "L")
    d = ImageDraw.Draw(c)
    for k in range(8):
        d.rectangle([10 + 24 * k, 12, 22 + 24 * k, 38], fill=245)
    d.ellipse([150, 5, 190, 45], outline=10, width=3)
    c.save(out / IMAGES["img_c"], format="PNG")


def load_image(out: Path, key: str):
    im = Image.open(out / IMAGES[key])
    im.load()
    return im


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

ROAD_NOUNS = ["car", "truck", "bus", "cyclist", "pedestrian", "traffic light", "stop sign", "lane",
              "intersection", "crosswalk", "roundabout", "motorcycle", "van", "tram", "bridge",
              "tunnel", "road", "highway", "sidewalk", "parking lot", "ambulance", "police car",
              "construction zone", "speed bump", "dog", "child", "scooter", "barrier", "cone",
              "tree", "building", "sky", "shadow", "puddle", "signal", "junction", "exit ramp"]
ROAD_ADJ = ["red", "green", "yellow", "white", "black", "blue", "grey", "large", "small", "parked",
            "moving", "stopped", "wet", "dark", "bright", "distant", "nearby", "left", "right",
            "oncoming", "slow", "fast", "empty", "crowded", "narrow", "wide"]
ROAD_VERB = ["waits at", "crosses", "turns onto", "approaches", "stops before", "overtakes",
             "follows", "merges into", "blocks", "enters", "leaves", "drives along", "is near"]
WORDS_EXTRA = ["the", "a", "an", "is", "are", "there", "what", "where", "how", "many", "describe",
               "image", "scene", "ahead", "behind", "is it safe", "answer", "question", "frame",
               "camera", "vehicle", "object", "distance", "meters", "seconds", "warning", "hazard"]
NON_ASCII = ["café", "naïve", "Straße", "Zürich", "São Paulo", "garçon", "résumé", "Ångström",
             "piñata", "Kraków", "Øresund", "façade", "crème brûlée", "über", "niño",
             "前方有一辆红色的汽车。", "信号灯是绿色的", "行人正在过马路", "道路", "车辆", "停车",
             "横断歩道を歩行者が渡っています", "信号", "自転車", "도로 위의 자동차", "안전",
             "Привет, дорога", "автомобиль", "Αθήνα", "γέφυρα", "مرحبا", "שלום",
             "🚗", "🚦", "🚲", "🚶", "⚠️", "🛑", "🚌", "👍", "🙂", "🚶‍♀️", "🇫🇷", "∑ x²", "→", "…", "—", "€5"]
CODE_LINES = [
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "def f(x):\n    return x ** 2 + 1",
    "if (speed > 50) { brake(); } else { cruise(); }",
    "{\"type\": \"car\", \"bbox\": [12, 40, 88, 96], \"score\": 0.93}",
    "const auto& t = tensors.at(\"model.embed_tokens.weight\");",
    "x = np.zeros((3, 64, 64), dtype=np.float32)",
    "SELECT id, label FROM detections WHERE score >= 0.5;",
    "#include <vector>\nint main() { return 0; }",
    "let v: Vec<u8> = vec![1, 2, 3];",
    "ls -la /tmp && echo $HOME | grep -v root",
    "    \t// indented with tabs and spaces",
    "a_b-c.d/e\\f:g;h,i!j?k@l#m$n%o^p&q*r(s)t[u]v{w}x|y~z`",
]


def build_corpus():
    rng = random.Random(1234)
    lines = []
    for _ in range(3000):
        n = rng.choice(ROAD_NOUNS)
        m = rng.choice(ROAD_NOUNS)
        s = (f"{rng.choice(['A', 'The', 'One', 'Another'])} {rng.choice(ROAD_ADJ)} {n} "
             f"{rng.choice(ROAD_VERB)} the {rng.choice(ROAD_ADJ)} {m}")
        r = rng.random()
        if r < 0.25:
            s += f" at {rng.randint(0, 130)} km/h"
        elif r < 0.4:
            s += f", {rng.randint(1, 400)} meters ahead"
        elif r < 0.5:
            s += f" in lane {rng.randint(1, 6)} of {rng.randint(2, 8)}"
        s += rng.choice([".", "!", "?", "...", ";", ""])
        if rng.random() < 0.2:
            s = s.lower()
        if rng.random() < 0.15:
            s += " " + rng.choice(NON_ASCII)
        if rng.random() < 0.1:
            s = "User: " + s + "\nAssistant:"
        lines.append(s)
    for _ in range(600):
        lines.append(" ".join(rng.choice(WORDS_EXTRA + ROAD_NOUNS) for _ in range(rng.randint(3, 12))))
    for _ in range(400):
        lines.append(f"{rng.randint(0, 10**rng.randint(1, 9))} {rng.random():.4f} "
                     f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                     f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}")
    # Pseudo-words from a fixed syllable set: enough distinct frequent pairs for ~1500 merges.
    syl = ["ka", "ro", "mi", "te", "su", "lan", "dor", "vex", "qui", "zen", "bra", "tol", "ush", "ein",
           "gar", "pho", "nyx", "sta", "rel", "mon", "ix", "ul", "cha", "tro", "fen", "wid", "ply", "osk",
           "ber", "gli", "har", "jum", "kre", "lo", "ma", "ne", "pri", "sol", "tu", "vy", "yar", "zo"]
    for _ in range(4000):
        words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(4, 10))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ",", "", "!", "?"]))
    for _ in range(60):
        lines.extend(CODE_LINES)
    for _ in range(40):
        lines.extend(NON_ASCII)
    for _ in range(100):
        lines.append("I'm sure it's the car's lane; they're here, we've seen it, you'll see, he'd go.")
        lines.append("Don't stop!  Wait...\tthen go.\n\nOK?   ")
    return lines


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # no normalizer, as in SmolLM2
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    try:
        tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    except TypeError:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in TRAINER_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    base_size = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_SPECIALS + ROW_COL_SPECIALS])
    tok.add_tokens([AddedToken(NON_SPECIAL_ADDED, special=False, normalized=False)])
    for i, t in enumerate(TRAINER_SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    log(f"tokenizer: BPE part {base_size}, total {tok.get_vocab_size(with_added_tokens=True)}")
    return tok


def wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast
    kwargs = dict(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=IMAGE_SPECIALS + ROW_COL_SPECIALS,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    hf = PreTrainedTokenizerFast(**kwargs)
    hf.chat_template = SMOLVLM_CHAT_TEMPLATE
    return hf


# ---------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------

def image_processor_kwargs():
    return dict(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": LONGEST_EDGE},
        resample=1,  # PIL.Image.LANCZOS
        do_image_splitting=True,
        max_image_size={"longest_edge": TILE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )


def pick_pil_image_processor(prefix):
    """The PIL-based image processor: <prefix>ImageProcessorPil in transformers >= 5.x's backend
    layout, else the slow <prefix>ImageProcessor. The torchvision backend replaces LANCZOS by
    BICUBIC, which the C++ port does not follow, so it is refused."""
    import transformers
    cls = getattr(transformers, f"{prefix}ImageProcessorPil", None)
    if cls is None:
        cls = getattr(transformers, f"{prefix}ImageProcessor")
    names = [c.__name__ for c in cls.__mro__]
    if any("Torchvision" in n or n.endswith("Fast") for n in names):
        raise RuntimeError(f"{cls.__name__} is not PIL-based (mro {names})")
    return cls


def build_processor(kind, hf_tok):
    ip_cls = pick_pil_image_processor("Idefics3" if kind == "idefics3" else "SmolVLM")
    ip = ip_cls(**image_processor_kwargs())
    n_before = len(hf_tok)
    if kind == "idefics3":
        from transformers import Idefics3Processor
        try:
            proc = Idefics3Processor(image_processor=ip, tokenizer=hf_tok, image_seq_len=IMAGE_SEQ_LEN,
                                     chat_template=SMOLVLM_CHAT_TEMPLATE)
        except (TypeError, ValueError) as e:
            log(f"  Idefics3Processor refused {type(ip).__name__} ({e!r}); swapping it in after construction")
            from transformers import Idefics3ImageProcessor
            proc = Idefics3Processor(image_processor=Idefics3ImageProcessor(**image_processor_kwargs()),
                                     tokenizer=hf_tok, image_seq_len=IMAGE_SEQ_LEN,
                                     chat_template=SMOLVLM_CHAT_TEMPLATE)
            proc.image_processor = ip
    else:
        import transformers.models.smolvlm.processing_smolvlm as psm
        from transformers import SmolVLMProcessor
        if getattr(psm, "num2words", None) is None:
            # num2words is only used to write video frame counts; images never reach it.
            psm.num2words = lambda n: str(n)
        try:
            from transformers import SmolVLMVideoProcessor
            vp = SmolVLMVideoProcessor()
        except Exception as e:  # noqa: BLE001
            log(f"  SmolVLMVideoProcessor unavailable ({e!r}); using None")
            vp = None
        try:
            proc = SmolVLMProcessor(image_processor=ip, tokenizer=hf_tok, video_processor=vp,
                                    image_seq_len=IMAGE_SEQ_LEN, chat_template=SMOLVLM_CHAT_TEMPLATE)
        except (TypeError, ValueError) as e:
            log(f"  SmolVLMProcessor refused {type(ip).__name__} ({e!r}); swapping it in after construction")
            from transformers import SmolVLMImageProcessor
            proc = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**image_processor_kwargs()),
                                    tokenizer=hf_tok, video_processor=vp, image_seq_len=IMAGE_SEQ_LEN,
                                    chat_template=SMOLVLM_CHAT_TEMPLATE)
            proc.image_processor = ip
    assert len(proc.tokenizer) == n_before, "processor construction changed the vocabulary"
    assert proc.image_processor is ip
    return proc, ip


def image_prompt_string(kind, rows, cols):
    """The processor's expansion of one <image> (transformers' processing_idefics3.py /
    processing_smolvlm.py get_image_prompt_string)."""
    fake, img, glob = "<fake_token_around_image>", "<image>", "<global-img>"
    try:
        if kind == "idefics3":
            from transformers.models.idefics3 import processing_idefics3 as pm
        else:
            from transformers.models.smolvlm import processing_smolvlm as pm
        return pm.get_image_prompt_string(rows, cols, IMAGE_SEQ_LEN, fake, img, glob)
    except (ImportError, AttributeError):
        pass
    # Same expansion, for versions without the helper (checked against the processor's ids anyway).
    if rows == 0 and cols == 0:
        return fake + glob + img * IMAGE_SEQ_LEN + fake
    s = ""
    for r in range(rows):
        for c in range(cols):
            s += f"{fake}<row_{r + 1}_col_{c + 1}>" + img * IMAGE_SEQ_LEN
        s += "\n"
    return s + f"\n{fake}{glob}" + img * IMAGE_SEQ_LEN + fake


def flat_ints(x):
    if hasattr(x, "tolist"):
        x = x.tolist()
    outv = []

    def rec(v):
        if isinstance(v, (list, tuple)):
            for e in v:
                rec(e)
        else:
            outv.append(int(v))
    rec(x)
    return outv


def run_processor(kind, proc, ip, hf_tok, prompt, images, split):
    """Returns (inputs, prompt_expanded, rows, cols). inputs is what the processor returns."""
    old = ip.do_image_splitting
    ip.do_image_splitting = split
    try:
        inputs = proc(text=prompt, images=[images], return_tensors="pt")
        side = ip(images=[images], return_tensors="pt", return_row_col_info=True, do_image_splitting=split)
    finally:
        ip.do_image_splitting = old
    rows = flat_ints(side["rows"])
    cols = flat_ints(side["cols"])
    assert torch.equal(side["pixel_values"].float(), inputs["pixel_values"].float()), "pixel_values mismatch"
    parts = prompt.split("<image>")
    assert len(parts) == len(images) + 1
    expanded = parts[0]
    for i in range(len(images)):
        expanded += image_prompt_string(kind, rows[i], cols[i]) + parts[i + 1]
    ids_proc = inputs["input_ids"][0].tolist()
    ids_tok = hf_tok(expanded, add_special_tokens=True)["input_ids"]
    assert ids_proc == ids_tok, "processor input_ids differ from tokenizer(expanded prompt)"
    return inputs, expanded, rows, cols


def render_chat(hf_tok, messages, add_generation_prompt):
    s = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(s, str):
        raise RuntimeError(f"apply_chat_template returned {type(s)}")
    return s


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def build_config(kind, vocab, ids, tied):
    from transformers import LlamaConfig
    if kind == "idefics3":
        from transformers import Idefics3Config as Cfg
        from transformers import Idefics3VisionConfig as VCfg
    else:
        from transformers import SmolVLMConfig as Cfg
        from transformers import SmolVLMVisionConfig as VCfg
    vcfg = VCfg(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_channels=3, image_size=TILE, patch_size=8, hidden_act="gelu_pytorch_tanh",
                layer_norm_eps=1e-6, attention_dropout=0.0)
    tcfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu",
                       max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                       tie_word_embeddings=tied, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                       pad_token_id=ids["pad"], attention_bias=False, mlp_bias=False)
    rp = getattr(tcfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = 100000.0
    elif hasattr(tcfg, "rope_theta"):
        tcfg.rope_theta = 100000.0
    kwargs = dict(vision_config=vcfg, text_config=tcfg, scale_factor=2, image_token_id=ids["image"],
                  tie_word_embeddings=tied, pad_token_id=ids["pad"], use_cache=True)
    try:
        params = inspect.signature(Cfg.__init__).parameters
        if "vocab_size" in params:
            kwargs["vocab_size"] = vocab
    except (TypeError, ValueError):
        pass
    cfg = Cfg(**kwargs)
    cfg.text_config.vocab_size = vocab
    cfg.text_config.tie_word_embeddings = tied
    cfg.tie_word_embeddings = tied
    cfg.image_token_id = ids["image"]
    return cfg


def model_class(kind):
    if kind == "idefics3":
        from transformers import Idefics3ForConditionalGeneration as M
    else:
        from transformers import SmolVLMForConditionalGeneration as M
    return M


def make_model(kind, cfg):
    M = model_class(kind)
    try:
        m = M._from_config(cfg, attn_implementation="eager")
    except TypeError:
        cfg._attn_implementation = "eager"
        m = M(cfg)
    m = m.float().eval()
    return m


def check_structure(model, tied):
    base = model.model
    emb = model.get_input_embeddings().weight
    head = model.lm_head.weight
    is_tied = emb.data_ptr() == head.data_ptr()
    assert is_tied == tied, f"lm_head tied={is_tied}, wanted {tied}"
    rot = getattr(base.text_model, "rotary_emb", None)
    if rot is not None and hasattr(rot, "inv_freq"):
        want = 1.0 / (100000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
        got = rot.inv_freq.float().cpu()
        assert torch.allclose(got, want, rtol=1e-5), f"rope inv_freq {got} != {want}"
    else:
        log("  warning: no rotary_emb.inv_freq to check rope_theta")


def init_weights(model, seed, round_bf16):
    """transformers' std-0.02 init gives near-zero logits; use larger weights so greedy decoding
    is decided by clear margins. Norm weights ~ 1 +- 0.1, biases small but nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            lname = name.lower()
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim == 1 and "norm" in lname and name.endswith("weight"):
                v = 1.0 + 0.1 * r
            elif p.ndim == 1:
                v = 0.02 * r
            else:
                v = 0.15 * r
            if round_bf16:
                v = v.to(torch.bfloat16).to(torch.float32)
            p.copy_(v)


class Capture:
    """Forward hooks that record per-stage activations of one full forward pass."""

    def __init__(self, model):
        base = model.model
        vm, tm = base.vision_model, base.text_model
        self.data = {}
        self.handles = [vm.embeddings.register_forward_hook(self._save("vision_hidden_0"))]
        for i, layer in enumerate(vm.encoder.layers):
            self.handles.append(layer.register_forward_hook(self._save(f"vision_hidden_{i + 1}")))
        self.handles.append(vm.post_layernorm.register_forward_hook(self._save("vision_out")))
        self.handles.append(base.connector.register_forward_hook(self._save("connector_out")))
        self.handles.append(tm.layers[0].register_forward_pre_hook(self._pre("text_in"), with_kwargs=True))
        for i, layer in enumerate(tm.layers):
            self.handles.append(layer.register_forward_hook(self._save(f"text_layer_out_{i}")))
        self.handles.append(tm.norm.register_forward_hook(self._save("text_norm_out")))
        self.n_text_layers = len(tm.layers)
        self.n_vision_layers = len(vm.encoder.layers)

    @staticmethod
    def _t(x):
        if isinstance(x, (tuple, list)):
            x = x[0]
        if hasattr(x, "last_hidden_state"):
            x = x.last_hidden_state
        return x.detach().float().clone()

    def _save(self, key):
        def hook(_m, _args, out):
            assert key not in self.data, f"{key} captured twice"
            self.data[key] = self._t(out)
        return hook

    def _pre(self, key):
        def hook(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.data[key] = self._t(x)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def forward_logits(model, ids, inputs, dtype):
    pv = inputs["pixel_values"].to(dtype)
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, use_cache=False)
    if "pixel_attention_mask" in inputs:
        kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
    return model(**kw)


@torch.no_grad()
def greedy(model, inputs, dtype, n=N_GREEDY):
    """Manual greedy loop, full recompute per step, no EOS stop. Returns (tokens, margins, first logits)."""
    ids = inputs["input_ids"]
    toks, margins, first = [], [], None
    for _ in range(n):
        lg = forward_logits(model, ids, inputs, dtype).logits[0, -1].float()
        if first is None:
            first = lg.clone()
        top = torch.topk(lg, 2)
        toks.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        ids = torch.cat([ids, top.indices[:1].view(1, 1).to(ids.dtype)], dim=1)
    return toks, margins, first


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def user(*parts):
    return {"role": "user", "content": list(parts)}


def T(text):
    return {"type": "text", "text": text}


IMG = {"type": "image"}

GOLDEN_CASES = {
    "tiny-idefics3": [
        dict(images=["img_a"], split=True,
             messages=[user(IMG, T("Describe the road ahead."))]),
        dict(images=["img_b"], split=False,
             messages=[user(T("What colour is the traffic light?"), IMG)]),
        dict(images=["img_c", "img_a"], split=False,
             messages=[user(T("Compare these two frames:"), IMG, T(" and "), IMG, T(". Any hazard?"))]),
    ],
    "tiny-smolvlm": [
        dict(images=["img_c"], split=True,
             messages=[user(IMG, T("Is the crosswalk clear? Answer in 5 words."))]),
        dict(images=["img_b"], split=False,
             messages=[user(IMG, T("Which lamp is lit?"))]),
        dict(images=["img_a"], split=False,
             messages=[{"role": "system", "content": [T("You are a careful driving assistant.")]},
                       user(T("Hello!")),
                       {"role": "assistant", "content": [T("Hi. Send me a frame.")]},
                       user(IMG, T("How many cars do you see?"))]),
    ],
}


def case_inputs(kind, proc, ip, hf_tok, out, case):
    images = [load_image(out, k) for k in case["images"]]
    prompt = render_chat(hf_tok, case["messages"], True)
    inputs, expanded, rows, cols = run_processor(kind, proc, ip, hf_tok, prompt, images, case["split"])
    return inputs, prompt, expanded, rows, cols


def special_ids(raw):
    """Ids a greedy continuation must avoid (an <image> would break the image merge)."""
    names = TRAINER_SPECIALS + IMAGE_SPECIALS + ROW_COL_SPECIALS + [NON_SPECIAL_ADDED]
    return {raw.token_to_id(t) for t in names}


def choose_seed(kind, cfg, tied, round_bf16, prepared, banned, base_seed):
    best = None
    for attempt in range(40):
        seed = base_seed + attempt
        model = make_model(kind, cfg)
        check_structure(model, tied)
        init_weights(model, seed, round_bf16)
        m16 = copy.deepcopy(model).to(torch.bfloat16)
        ok, worst = True, float("inf")
        for inputs in prepared:
            toks, margins, _ = greedy(model, inputs, torch.float32)
            worst = min(worst, min(margins))
            if any(t in banned for t in toks):
                ok = False
                break
            toks16, _, _ = greedy(m16, inputs, torch.bfloat16)
            if any(t in banned for t in toks16):
                ok = False
                break
        log(f"  seed {seed}: ok={ok} min margin {worst:.4g}")
        if ok and worst > MARGIN_MIN:
            return seed, model
        if ok and worst > MARGIN_FLOOR and (best is None or worst > best[0]):
            best = (worst, seed)
    if best is None:
        raise RuntimeError(f"{kind}: no seed gave greedy margins > {MARGIN_FLOOR}")
    model = make_model(kind, cfg)
    init_weights(model, best[1], round_bf16)
    return best[1], model


def save_model_dir(kind, name, model, proc, ip, out, dtype_bf16, sharded, ids):
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    to_save = copy.deepcopy(model).to(torch.bfloat16) if dtype_bf16 else model
    to_save.save_pretrained(d, max_shard_size=("600KB" if sharded else "2GB"))
    proc.save_pretrained(d)
    if not (d / "preprocessor_config.json").exists():
        ip.save_pretrained(d)
    # The C++ loader reads the template from tokenizer_config.json (as SmolVLM ships it).
    tc_path = d / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    if tc.get("chat_template") != SMOLVLM_CHAT_TEMPLATE:
        tc["chat_template"] = SMOLVLM_CHAT_TEMPLATE
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not (d / "chat_template.json").exists() and not (d / "chat_template.jinja").exists():
        (d / "chat_template.json").write_text(json.dumps({"chat_template": SMOLVLM_CHAT_TEMPLATE}, indent=2) + "\n")
    if not (d / "special_tokens_map.json").exists():
        stm = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>", "additional_special_tokens": IMAGE_SPECIALS + ROW_COL_SPECIALS}
        (d / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
    files = sorted(p.name for p in d.iterdir())
    log(f"  {name}: {files}")
    st = [f for f in files if f.endswith(".safetensors")]
    if sharded:
        assert "model.safetensors.index.json" in files and len(st) >= 2, f"expected 2+ shards, got {st}"
    else:
        assert st == ["model.safetensors"], f"expected a single model.safetensors, got {st}"
    from safetensors import safe_open
    keys = {}
    for f in st:
        with safe_open(str(d / f), framework="pt") as sf:
            for k in sf.keys():
                keys[k] = (f, str(sf.get_slice(k).get_dtype()), list(sf.get_slice(k).get_shape()))
    log(f"  {name}: {len(keys)} tensors")
    for k in sorted(keys):
        log(f"    {k} {keys[k][1]} {keys[k][2]} ({keys[k][0]})")
    return d


def load_saved(kind, d):
    M = model_class(kind)
    try:
        m = M.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        m = M.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    return m.float().eval()


@torch.no_grad()
def golden_case(kind, name, k, model, m16, proc, ip, hf_tok, raw, out, case, seed_tokens):
    inputs, prompt, expanded, rows, cols = case_inputs(kind, proc, ip, hf_tok, out, case)
    ids = inputs["input_ids"]
    cap = Capture(model)
    try:
        fo = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                   pixel_values=inputs["pixel_values"].float(),
                   pixel_attention_mask=inputs.get("pixel_attention_mask"),
                   output_hidden_states=True, use_cache=False)
    finally:
        cap.remove()
    c = cap.data
    L = cap.n_text_layers
    tensors = {
        "input_ids": ids[0].to(torch.int64),
        "pixel_values": inputs["pixel_values"][0].float(),
        "vision_out": c["vision_out"],
        "connector_out": c["connector_out"],
    }
    for i in range(cap.n_vision_layers + 1):
        tensors[f"vision_hidden_{i}"] = c[f"vision_hidden_{i}"]
    tensors["text_hidden_0"] = c["text_in"][0]
    for i in range(1, L):
        tensors[f"text_hidden_{i}"] = c[f"text_layer_out_{i - 1}"][0]
    tensors[f"text_hidden_{L}"] = c["text_norm_out"][0]
    # Extra (not in fixtures.md's list): the last decoder layer's output before the final norm.
    tensors["text_last_layer_prenorm"] = c[f"text_layer_out_{L - 1}"][0]

    logits_first = fo.logits[0, -1].float()
    # Cross-checks against transformers' own outputs (printed, not fatal).
    try:
        hs = getattr(fo, "hidden_states", None)
        if hs is not None:
            diffs = [float((hs[i][0].float() - tensors[f"text_hidden_{i}"]).abs().max()) if i <= L else None
                     for i in range(len(hs))]
            log(f"    transformers hidden_states: {len(hs)} entries, max|diff| vs hooks {diffs}")
        vo = model.model.vision_model(pixel_values=tensors["pixel_values"], output_hidden_states=True)
        log(f"    vision direct vs hook: {float((vo.last_hidden_state - tensors['vision_out']).abs().max()):.3g}")
        vhs = getattr(vo, "hidden_states", None)
        if vhs is not None:
            vd = [float((vhs[i].float() - tensors[f"vision_hidden_{i}"]).abs().max())
                  for i in range(min(len(vhs), cap.n_vision_layers + 1))]
            log(f"    vision hidden_states: {len(vhs)} entries, max|diff| vs hooks {vd}")
        head = model.lm_head(tensors[f"text_hidden_{L}"][-1:]).float()[0]
        log(f"    lm_head(text_hidden_{L}[-1]) vs logits: {float((head - logits_first).abs().max()):.3g}")
    except Exception as e:  # noqa: BLE001
        log(f"    cross-check failed: {e!r}")

    toks, margins, first = greedy(model, inputs, torch.float32)
    assert torch.equal(first, logits_first) or float((first - logits_first).abs().max()) < 1e-5
    if seed_tokens is not None and toks != seed_tokens:
        log(f"    WARNING: greedy tokens after save/reload differ from seed search: {toks} vs {seed_tokens}")
    toks16, margins16, first16 = greedy(m16, inputs, torch.bfloat16)
    tensors["logits_first"] = logits_first
    tensors["logits_first_bf16"] = first16

    tensors = {kk: v.contiguous() for kk, v in tensors.items()}
    from safetensors.torch import save_file
    gdir = out / "golden"
    gdir.mkdir(parents=True, exist_ok=True)
    base = f"{name}_case{k}"
    save_file(tensors, str(gdir / f"{base}.safetensors"), metadata={"format": "pt"})
    meta = {
        "model": name,
        "messages": case["messages"],
        "images": [IMAGES[i] for i in case["images"]],
        "prompt": prompt,
        "prompt_expanded": expanded,
        "do_image_splitting": case["split"],
        "rows": rows,
        "cols": cols,
        "n_tiles": int(tensors["pixel_values"].shape[0]),
        "greedy_tokens": toks,
        "greedy_text": raw.decode(toks, skip_special_tokens=False),
        "greedy_tokens_bf16": toks16,
        "greedy_text_bf16": raw.decode(toks16, skip_special_tokens=False),
        "greedy_min_margin": min(margins),
        "greedy_min_margin_bf16": min(margins16),
        "greedy_method": "argmax loop, full forward per step (no KV cache), 16 tokens, no stop on EOS",
        "image_processor_class": type(ip).__name__,
        "tensors": {kk: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for kk, v in sorted(tensors.items())},
    }
    (gdir / f"{base}.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"  {base}: T={ids.shape[1]} tiles={meta['n_tiles']} rows={rows} cols={cols} "
        f"greedy={toks} min margin {min(margins):.4g}; bf16={toks16}")
    return meta


# ---------------------------------------------------------------------------------------------
# Tokenizer / chat-template / preprocessing cases
# ---------------------------------------------------------------------------------------------

def tokenizer_texts():
    fixed = [
        "", " ", "  ", "\t", "\n", "\r\n", " \n ", "a", "A", "hello", " hello", "hello ", "hello  ",
        "Hello world", "Hello, world!", "hello\nworld", "hello\n\nworld", "hello \n world",
        "trailing spaces   ", "   leading spaces", "tabs\tin\tbetween", "mixed \t \n whitespace\t\n",
        "line1\nline2\n", "\n\n\n", "a  b   c    d", "x\u00a0y", "word\u2003em space",
        "I'm", "it's", "don't", "they're", "we've", "you'll", "he'd", "I'M SHOUTING", "IT'S", "'s", "'t",
        "rock 'n' roll", "the car's wheel", "O'Neil's", "'quoted'", "\"double quoted\"",
        "0", "7", "42", "123", "2025", "3.14159", "1,000,000", "-17", "+3", "1e-5", "0x1F",
        "12345678901234567890", "000000000000", "phone: 555-0100", "v1.2.3", "a1b2c3", "route66",
        "speed 45km/h", "45 km/h", "10:30", "2024-01-15", "$9.99", "50%", "#1", "100°C",
        "café", "naïve", "Straße", "Zürich", "São Paulo", "résumé", "Ångström", "crème brûlée",
        "Ünïcödé àççéñts", "ÀÉÎÕÜ", "ﬁ ligature", "e\u0301 combining", "Kraków Øresund",
        "前方有一辆红色的汽车。", "信号灯是绿色的", "行人", "中文English混合", "日本語のテキスト",
        "横断歩道を歩行者が渡っています", "도로 위의 자동차", "Привет, дорога", "Αθήνα", "مرحبا بالعالم", "שלום",
        "🚗", "🚦🚲🚶", "car 🚗 ahead", "⚠️ hazard", "🚶‍♀️", "🇫🇷🇩🇪", "👍🏽", "🙂🙂🙂", "∑ x² → ∞", "…—–",
        "a\u200bb zero width", "\u00ff\u0100\u07ff\u0800\uffff", "\U0001F600\U0001F680",
        "for (int i = 0; i < n; ++i) { sum += x[i]; }", "def f(x):\n    return x ** 2",
        "if (a && b || !c) return;", "std::vector<int> v{1, 2, 3};", "x = y + z * 2 / 3 - 1",
        "{\"key\": [1, 2.5, null, true]}", "<div class=\"x\">text</div>", "path/to/file.txt",
        "C:\\Users\\me", "user@example.com", "https://example.org/a?b=c&d=e", "snake_case_name",
        "camelCaseName", "SCREAMING_CASE", "kebab-case-name", "....", "!!!", "???", "---", "___",
        "()", "[]", "{}", "<>", "<<>>", "a<b>c", "<image", "image>", "<imag", "<image><image>",
        "<image>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<end_of_utterance>",
        "<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>", "<row_7_col_1>",
        "a<image>b<|im_start|>", "User:<image>Describe.<end_of_utterance>\nAssistant:",
        "<|im_start|>User: hi<end_of_utterance>\nAssistant: hello<end_of_utterance>\n",
        "<fake_token_around_image><row_1_col_2><image><image><fake_token_around_image>",
        "<scene>", "a<scene>b", "<scene> <scene>", " <scene> ", "<scene>\n<image>", "<sce ne>", "<SCENE>",
        "text<|endoftext|>more", "<|im_start|><|im_start|>", "<end_of_utterance>end",
        "The red car stops at the intersection.", "A cyclist waits at the crosswalk, 12 meters ahead.",
        "Is it safe to turn left? Answer yes or no.", "There are 3 cars, 2 trucks and 1 bus.",
        "lane 2 of 4 at 88 km/h", "THE PEDESTRIAN IS CROSSING", "the  pedestrian   is crossing",
    ]
    rng = random.Random(99)
    pieces = (ROAD_NOUNS + ROAD_ADJ + WORDS_EXTRA + NON_ASCII +
              ["<image>", "<scene>", "<|im_end|>", "<end_of_utterance>", "<row_2_col_3>", "123", "4567",
               "3.5", "'s", "'re", "'ll", "n't", "!", "?", ",", ".", "(", ")", "\"", "-", "/", "::", "->"])
    seps = [" ", "", "  ", "\n", "\t", " \n", ", ", ". ", "\n\n", "   "]
    gen = []
    while len(gen) < 240:
        n = rng.randint(1, 10)
        s = ""
        for i in range(n):
            s += rng.choice(pieces)
            if i + 1 < n:
                s += rng.choice(seps)
        if rng.random() < 0.15:
            s += rng.choice([" ", "  ", "\n", "\t "])
        if rng.random() < 0.1:
            s = rng.choice([" ", "\n", "\t"]) + s
        if rng.random() < 0.1:
            s = s.upper()
        gen.append(s)
    for _ in range(20):
        gen.append("".join(str(rng.randint(0, 9)) for _ in range(rng.randint(5, 40))))
    seen, outl = set(), []
    for s in fixed + gen:
        if s not in seen:
            seen.add(s)
            outl.append(s)
    return outl


def write_tokenizer_cases(out, raw):
    cases = []
    for s in tokenizer_texts():
        enc = raw.encode(s, add_special_tokens=False).ids
        enc_sp = raw.encode(s, add_special_tokens=True).ids
        cases.append({"text": s, "ids": enc, "ids_special": enc_sp,
                      "decoded": raw.decode(enc, skip_special_tokens=False),
                      "decoded_skip_special": raw.decode(enc, skip_special_tokens=True)})
    # Extra (not in fixtures.md): decode-only cases with prefixes that cut multi-byte characters and
    # random id lists; the ByteLevel decoder then emits U+FFFD for invalid UTF-8.
    rng = random.Random(5)
    vocab_n = raw.get_vocab_size(with_added_tokens=True)
    dec = []
    for s in ["前方有一辆红色的汽车。", "🚗🚦🚲", "crème brûlée", "도로 위의 자동차", "🚶‍♀️ Ünïcödé"]:
        ids = raw.encode(s, add_special_tokens=False).ids
        for k in range(1, len(ids)):
            dec.append(ids[:k])
    for _ in range(40):
        dec.append([rng.randrange(vocab_n) for _ in range(rng.randint(1, 12))])
    dec_cases = [{"ids": ids, "decoded": raw.decode(ids, skip_special_tokens=False),
                  "decoded_skip_special": raw.decode(ids, skip_special_tokens=True)} for ids in dec]
    doc = {"tokenizer": "tiny-idefics3/tokenizer.json", "cases": cases, "decode_cases": dec_cases}
    p = out / "tokenizer_cases.json"
    p.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n_same = sum(c["ids"] == c["ids_special"] for c in cases)
    log(f"tokenizer_cases.json: {len(cases)} cases ({n_same} with ids == ids_special), {len(dec_cases)} decode cases")


def chat_conversations():
    S = {"role": "system", "content": [T("You are a driving assistant. Be brief.")]}
    A = lambda t: {"role": "assistant", "content": [T(t)]}  # noqa: E731
    return [
        [user(T("Hello!"))],
        [user(IMG, T("Describe this image."))],
        [user(T("What is in this picture?"), IMG)],
        [user(IMG, IMG, T("Which frame shows a red light?"))],
        [S, user(IMG, T("Count the cars.")), A("There are 2 cars."), user(T("And trucks?"))],
        [S, user(T("Multi-line\ntext with\ttabs, 'quotes', \"double\", {{ braces }} and {% tags %}."))],
        [user(IMG)],
        [user(T("First frame:"), IMG), A("A crosswalk."), user(T("Second:"), IMG, T(" Any change?"))],
        [user(T("Unicode: café 前方 🚗 — ok?")), A("Yes <end_of_utterance> inside text.")],
    ]


def write_chat_template_cases(out, hf_tok):
    cases = []
    for msgs in chat_conversations():
        for agp in (True, False):
            cases.append({"messages": msgs, "add_generation_prompt": agp,
                          "expected": render_chat(hf_tok, msgs, agp)})
    doc = {"template_source": "tiny-idefics3/tokenizer_config.json", "template": SMOLVLM_CHAT_TEMPLATE,
           "cases": cases}
    (out / "chat_template_cases.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    log(f"chat_template_cases.json: {len(cases)} cases")


def write_preprocess_cases(out, proc, ip, hf_tok):
    from safetensors.torch import save_file
    from transformers.image_transforms import convert_to_rgb
    tensors, cases = {}, []
    prompt_in = render_chat(hf_tok, [user(IMG, T("Describe this image."))], True)
    for key in ["img_a", "img_b", "img_c"]:
        im = load_image(out, key)
        if key != "img_c":
            rgb = convert_to_rgb(im)
            rgb = np.array(rgb if isinstance(rgb, Image.Image) else rgb)
            # Extra tensor: the decoded image after transformers' convert_to_rgb (alpha composited on
            # white), [H, W, 3] as int32, to separate decoder differences from resize differences.
            tensors[f"rgb_{key}"] = torch.from_numpy(rgb.astype(np.int32))
        for split in (True, False):
            inputs, expanded, rows, cols = run_processor("idefics3", proc, ip, hf_tok, prompt_in, [im], split)
            tname = f"{key}_split{int(split)}"
            tensors[tname] = inputs["pixel_values"][0].float().contiguous()
            cases.append({"model": "tiny-idefics3", "image": IMAGES[key], "image_mode": im.mode,
                          "image_size_wh": list(im.size), "do_image_splitting": split,
                          "rows": rows[0], "cols": cols[0], "pixel_values": tname,
                          "n_tiles": int(tensors[tname].shape[0]),
                          "prompt_in": prompt_in, "prompt_expanded": expanded,
                          "input_ids": inputs["input_ids"][0].tolist()})
            log(f"  preprocess {tname}: rows={rows[0]} cols={cols[0]} tiles={tensors[tname].shape[0]}")
    (out / "golden").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "golden" / "preprocess.safetensors"), metadata={"format": "pt"})
    doc = {"image_processor_class": type(ip).__name__, "image_processor_module": type(ip).__module__,
           "image_processor": image_processor_kwargs(), "image_seq_len": IMAGE_SEQ_LEN, "cases": cases}
    (out / "preprocess_cases.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    log(f"preprocess_cases.json: {len(cases)} cases")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", help="output directory (default tests/fixtures)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import tokenizers
    import transformers
    import safetensors
    import PIL
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "safetensors": getattr(safetensors, "__version__", "?"), "PIL": PIL.__version__,
                "numpy": np.__version__}
    log("versions:", json.dumps(versions))

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_default_dtype(torch.float32)
    transformers.logging.set_verbosity_error()

    for sub in ["images", "golden", "tiny-idefics3", "tiny-smolvlm"]:
        if (out / sub).exists():
            shutil.rmtree(out / sub)

    draw_images(out)
    log("images:", {k: (load_image(out, k).size, load_image(out, k).mode) for k in IMAGES})

    raw_trained = build_tokenizer()
    hf_tok = wrap_tokenizer(raw_trained)
    vocab = len(hf_tok)
    conv = lambda t: hf_tok.convert_tokens_to_ids(t)  # noqa: E731
    ids = {"bos": conv("<|im_start|>"), "eos": conv("<end_of_utterance>"), "pad": conv("<|im_end|>"),
           "image": conv("<image>")}
    log(f"vocab {vocab}, special ids {ids}")
    probe = "a<image>b<|im_start|> café 123"
    assert hf_tok(probe, add_special_tokens=True)["input_ids"] == raw_trained.encode(probe).ids, \
        "transformers tokenizer adds tokens the raw tokenizer does not"

    summary = {"versions": versions, "models": {}}
    specs = [("tiny-idefics3", "idefics3", True, True, False, 1000),
             ("tiny-smolvlm", "smolvlm", False, False, True, 2000)]
    raw = None
    for name, kind, tied, bf16_weights, sharded, base_seed in specs:
        log(f"=== {name}")
        proc, ip = build_processor(kind, hf_tok)
        log(f"  processor {type(proc).__name__}, image processor {type(ip).__module__}.{type(ip).__name__}")
        cfg = build_config(kind, vocab, ids, tied)
        prepared = [case_inputs(kind, proc, ip, hf_tok, out, c)[0] for c in GOLDEN_CASES[name]]
        from tokenizers import Tokenizer
        raw_tmp = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
        banned = special_ids(raw_tmp)
        seed, model = choose_seed(kind, cfg, tied, bf16_weights, prepared, banned, base_seed)
        seed_tokens = [greedy(model, inp, torch.float32)[0] for inp in prepared]
        d = save_model_dir(kind, name, model, proc, ip, out, bf16_weights, sharded, ids)
        loaded = load_saved(kind, d)
        check_structure(loaded, tied)
        sd0, sd1 = model.state_dict(), loaded.state_dict()
        worst = max(float((sd0[k].float() - sd1[k].float()).abs().max()) for k in sd0 if k in sd1)
        log(f"  reload: {len(sd1)} state-dict entries, max |diff| vs in-memory {worst:.3g}")
        m16 = copy.deepcopy(loaded).to(torch.bfloat16)
        raw = Tokenizer.from_file(str(d / "tokenizer.json"))
        metas = []
        for k, case in enumerate(GOLDEN_CASES[name]):
            metas.append(golden_case(kind, name, k, loaded, m16, proc, ip, hf_tok, raw, out, case, seed_tokens[k]))
        cfg_json = json.loads((d / "config.json").read_text())
        summary["models"][name] = {"seed": seed, "config": cfg_json,
                                   "image_processor_class": type(ip).__name__,
                                   "processor_class": type(proc).__name__,
                                   "cases": [m["greedy_tokens"] for m in metas]}
        if name == "tiny-idefics3":
            write_preprocess_cases(out, proc, ip, hf_tok)

    t1 = (out / "tiny-idefics3" / "tokenizer.json").read_bytes()
    t2 = (out / "tiny-smolvlm" / "tokenizer.json").read_bytes()
    log(f"tokenizer.json identical across models: {t1 == t2}")
    raw = tokenizers.Tokenizer.from_file(str(out / "tiny-idefics3" / "tokenizer.json"))
    write_tokenizer_cases(out, raw)
    write_chat_template_cases(out, hf_tok)
    (out / "golden" / "generator.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")

    total = 0
    log("files written:")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            sz = p.stat().st_size
            total += sz
            log(f"  {sz:>10}  {p.relative_to(out)}")
    log(f"total {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
