#!/usr/bin/env python3
"""Token pruning and head pruning of the road-scene student's vision tower: the PyTorch reference that edgevlm's
C++ runtime follows, pruning-aware fine-tuning of the shipped student, and golden tensors for the parity test.

  python3 train/prune.py finetune --simdump S --model models/road-student --work /tmp/w --out /tmp/o [--seconds 240]
  CUDA_VISIBLE_DEVICES= python3 train/prune.py golden --model models/road-student --out tests/fixtures/prune-golden

Semantics (train/README.md, section "prune.py", is the specification the C++ side implements):
- vision tower = Idefics3's SigLIP: patch conv + position embeddings, L layers
  (x += out_proj(attn(ln1(x))); x += fc2(gelu_tanh(fc1(ln2(x))))), post_layernorm. The layer loop is this file's own
  (over the modules of model.vision_model.encoder.layers), so that tokens can be dropped between layers.
- schedule [(l, r), ...] (l increasing, r non-increasing): after layer l, keep k = max(1, floor(r * N + 0.5)) of the
  current tokens (N = the tile's patches, 196 for the student), the ones with the highest importance
  imp[b, j] = 1/(H T) sum_h sum_i P[b, h, i, j] (layer l's own softmax attention, float32; ties: lower current index
  first), in ascending original position. Every token's state is written into a grid [B, N, E] at its original
  position when it is dropped (and the survivors' after the last layer); post_layernorm runs on the whole grid,
  which goes to the connector and the fast head unchanged.
- llm_keep < 1: the last layer's importance (0 for tokens dropped earlier) is summed over the s x s vision tokens
  that pixel shuffle merges into each connector token; the top max(1, floor(llm_keep * T_conn + 0.5)) connector
  tokens (ties: lower index) go to the language model, in ascending order, with as many <image> tokens.
- head masking: head h of layer l contributes nothing (columns [h D, (h+1) D) of the attention output are zeroed
  before out_proj); equal to deleting those rows of q/k/v and columns of out_proj (remove_heads).
"""
import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roadvlm as rv  # noqa: E402
from roadvlm import (DESCRIBE_PROMPT, FIELDS, log, parse_description, prompt_prefix)  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCHEDULE = "1:0.5,3:0.25"
# Schedules drawn for the pruned half of the fine-tuning batches (the default twice as often).
TRAIN_SCHEDULES = ["1:0.5,3:0.25", "1:0.5,3:0.25", "1:0.4,2:0.25", "2:0.5,4:0.3", "1:0.6,3:0.3", "1:0.5,3:0.2",
                   "0:0.7,2:0.4,4:0.2", "2:0.4,4:0.25"]
# Held-out evaluations: (name, schedule, llm_keep, random-drop, with the temporal adapter's memory).
EVALS = [
    ("unpruned", "", 1.0, False, False),
    ("unpruned+temporal", "", 1.0, False, True),
    ("1:0.5,3:0.25", "1:0.5,3:0.25", 1.0, False, False),
    ("1:0.4,2:0.25", "1:0.4,2:0.25", 1.0, False, False),
    ("2:0.5,4:0.3", "2:0.5,4:0.3", 1.0, False, False),
    ("0:0.7,2:0.4,4:0.2", "0:0.7,2:0.4,4:0.2", 1.0, False, False),
    ("random:1:0.5,3:0.25", "1:0.5,3:0.25", 1.0, True, False),
    ("1:0.5,3:0.25+llm0.5", "1:0.5,3:0.25", 0.5, False, False),
    ("llm0.5", "", 0.5, False, False),
]
GOLDEN_CASES = [("s0", "1:0.5,3:0.25", 0.5), ("s1", "0:0.7,2:0.4,4:0.2", 1.0)]
GOLDEN_HEADS = [(0, 1), (2, 0), (3, 2), (5, 1)]


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

def parse_schedule(s):
    """"1:0.5,3:0.25" -> [(1, 0.5), (3, 0.25)]; "" or "none" -> []."""
    if s is None or (isinstance(s, str) and s.strip().lower() in ("", "none")):
        return []
    if not isinstance(s, str):
        out = [(int(l), float(r)) for l, r in s]
    else:
        out = []
        for part in s.split(","):
            l, r = part.split(":")
            out.append((int(l), float(r)))
    for i, (l, r) in enumerate(out):
        if not 0 < r <= 1:
            raise ValueError(f"schedule {s!r}: keep fraction {r} not in (0, 1]")
        if i and (l <= out[i - 1][0] or r > out[i - 1][1]):
            raise ValueError(f"schedule {s!r}: layers must increase and fractions must not")
    return out


def schedule_str(sched):
    return ",".join(f"{l}:{r:g}" for l, r in sched)


def keep_count(r, n):
    return max(1, int(math.floor(r * n + 0.5)))


def parse_heads(spec):
    """"0:1,2:0" or [(0, 1), (2, 0)] -> {layer: set(heads)}."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return {int(l): {int(h) for h in hs} for l, hs in spec.items()}
    if isinstance(spec, str):
        spec = [tuple(int(v) for v in p.split(":")) for p in spec.split(",")]
    out = {}
    for l, h in spec:
        out.setdefault(int(l), set()).add(int(h))
    return out


def _parts(model):
    """(Idefics3ForConditionalGeneration, vision model, connector) of a RoadVLM or an Idefics3 model."""
    vlm = model.vlm if hasattr(model, "vlm") else model
    return vlm, vlm.model.vision_model, vlm.model.connector


def vision_head_dim(vcfg):
    d = getattr(vcfg, "head_dim", None)
    return int(d) if d else vcfg.hidden_size // vcfg.num_attention_heads


def tokens_per_layer(n, n_layers, sched):
    """Tokens that enter each layer under a schedule (the C++ runtime's cost model)."""
    s = dict(sched)
    t, out = n, []
    for l in range(n_layers):
        out.append(t)
        if l in s:
            t = min(t, keep_count(s[l], n))
    return out


def vision_gflops(vcfg, sched):
    n = (vcfg.image_size // vcfg.patch_size) ** 2
    e, f = vcfg.hidden_size, vcfg.intermediate_size
    tl = tokens_per_layer(n, vcfg.num_hidden_layers, sched)
    per = sum(2 * t * (4 * e * e + 2 * e * f) + 4 * t * t * e for t in tl)
    return (2 * n * 3 * vcfg.patch_size ** 2 * e + per) * 1e-9


# ---------------------------------------------------------------------------------------------
# The reference forward
# ---------------------------------------------------------------------------------------------

def _attention(layer, h, d, need_probs, head_keep=None):
    """Layer's self-attention on h [B, T, E] (layer_norm1 already applied). Returns (out_proj output, P or None,
    head count). P [B, nh, T, T] is float32 (scores and softmax outside autocast). head_keep: bool [nh] or None."""
    att = layer.self_attn
    B, T, _ = h.shape
    q, k, v = att.q_proj(h), att.k_proj(h), att.v_proj(h)
    nh = q.shape[-1] // d
    q = q.view(B, T, nh, d).transpose(1, 2)
    k = k.view(B, T, nh, d).transpose(1, 2)
    v = v.view(B, T, nh, d).transpose(1, 2)
    scale = d ** -0.5
    p = None
    if need_probs or not hasattr(F, "scaled_dot_product_attention"):
        with torch.autocast(device_type=h.device.type, enabled=False):
            # Same operation order as transformers' eager attention: (q k^T) * scale, softmax in float32, P v.
            p = F.softmax(torch.matmul(q.float(), k.float().transpose(2, 3)) * scale, dim=-1, dtype=torch.float32)
        o = torch.matmul(p.to(v.dtype), v)
    else:
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)
    if head_keep is not None:
        o = o * head_keep.to(o.dtype).view(1, nh, 1, 1)
    o = o.transpose(1, 2).reshape(B, T, nh * d)
    return att.out_proj(o), p, nh


def _importance(p, head_keep=None):
    """imp[b, j] = 1/(H T) sum_h sum_i P[b, h, i, j], over the heads that are not masked (H of them)."""
    with torch.no_grad():
        if head_keep is not None:
            p = p[:, head_keep.to(p.device)]
        H, T = p.shape[1], p.shape[2]
        return p.sum(dim=(1, 2)) / (H * T)


def _top_sorted(scores, k):
    """Indices of the k highest scores per row (ties: lower index first), in ascending order. [B, k] int64."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return order.sort(dim=1).values


def _margin(scores, k):
    """Smallest gap (over the batch) between the k-th and the (k+1)-th highest score; None when all are kept."""
    if k >= scores.shape[1]:
        return None
    s = torch.sort(scores.float(), dim=1, descending=True).values
    return float((s[:, k - 1] - s[:, k]).min())


def pixel_shuffle_map(connector, n, device=None):
    """[T_conn, s*s] int64: the vision tokens (positions 0..n-1) that the connector's pixel shuffle merges into
    each connector token, read off by running its pixel_shuffle on an index tensor; checked against the formula
    (token (R, C) of the g/s x g/s grid <- rows sR..sR+s-1, columns sC..sC+s-1 of the g x g patch grid)."""
    s = connector.scale_factor
    idx = torch.arange(n, dtype=torch.float32, device=device).view(1, n, 1)
    m = connector.pixel_shuffle(idx, s)[0].round().long()
    g = int(round(math.sqrt(n)))
    assert m.shape == (n // (s * s), s * s) and sorted(m.flatten().tolist()) == list(range(n)), m.shape
    for t in range(m.shape[0]):
        R, C = divmod(t, g // s)
        want = {(s * R + i) * g + s * C + j for i in range(s) for j in range(s)}
        assert set(m[t].tolist()) == want, (t, m[t].tolist(), sorted(want))
    return m


def pruned_vision_forward(model, pixel_values, schedule=(), llm_keep=1.0, random_scores=None, head_mask=None,
                          with_connector=True):
    """The vision tower with token pruning (and head masking), then the connector and the LLM token selection.

    model: a RoadVLM or an Idefics3ForConditionalGeneration (per-layer head counts are read off q_proj's shape,
    so a physically head-pruned model works too). pixel_values [B, 3, S, S]. schedule: [(layer, keep fraction)]
    or a string. llm_keep: fraction of connector tokens for the LLM. random_scores: None, or a torch.Generator
    (uniform random scores instead of the importance: the random-drop baseline). head_mask: {layer: heads} or
    [(layer, head)] or "l:h,...".

    Returns dict: grid [B, N, E] (post_layernorm), steps (per scored layer: layer, keep, importance [B, T] float32
    over the tokens that entered the layer (the scores used, random ones for random-drop), kept [B, k] original
    positions), llm_importance [B, N] (None when llm_keep >= 1), connector_out [B, T_conn, Ht], connector_scores
    [B, T_conn] (None when llm_keep >= 1), selected [B, k_conn] int64, image_embeds [B, k_conn, Ht]."""
    vlm, vm, conn = _parts(model)
    sched = parse_schedule(schedule)
    heads = parse_heads(head_mask)
    emb = vm.embeddings
    w = emb.patch_embedding.weight
    x = emb.patch_embedding(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)
    B, N, E = x.shape
    # Position ids of a full tile are 0..N-1 (Idefics3VisionEmbeddings' bucketing gives exactly these).
    x = x + emb.position_embedding.weight[:N].unsqueeze(0)
    layers = vm.encoder.layers
    L = len(layers)
    d = vision_head_dim(vlm.config.vision_config)
    s_at = dict(sched)
    if sched and max(s_at) >= L:
        raise ValueError(f"schedule {schedule_str(sched)}: the tower has {L} layers")
    keep_masks = {}
    for l, hs in heads.items():
        nh = layers[l].self_attn.q_proj.out_features // d
        m = torch.ones(nh, dtype=torch.bool, device=x.device)
        m[list(hs)] = False
        keep_masks[l] = m
    want_llm = llm_keep < 1
    pos = torch.arange(N, device=x.device).unsqueeze(0).expand(B, N)
    grid = None
    steps = []
    last_imp = last_pos = None

    def write(g, xs, ps):
        if g is None:
            g = torch.zeros(B, N, E, dtype=xs.dtype, device=xs.device)
        return g.scatter(1, ps.unsqueeze(-1).expand(-1, -1, E), xs.to(g.dtype))

    for l, layer in enumerate(layers):
        scored = l in s_at
        need = (scored and random_scores is None) or (l == L - 1 and want_llm)
        a, p, _ = _attention(layer, layer.layer_norm1(x), d, need, keep_masks.get(l))
        x = x + a
        hm = layer.layer_norm2(x)
        x = x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(hm), approximate="tanh"))
        imp = _importance(p, keep_masks.get(l)) if need else None
        if l == L - 1 and want_llm:
            last_imp, last_pos = imp, pos
        if scored:
            T = x.shape[1]
            k = min(keep_count(s_at[l], N), T)
            if random_scores is not None:
                sc = torch.rand(B, T, device=x.device, generator=random_scores)
            else:
                sc = imp
            cur = _top_sorted(sc, k)
            grid = write(grid, x, pos)
            x = x.gather(1, cur.unsqueeze(-1).expand(-1, -1, E))
            pos_new = pos.gather(1, cur)
            steps.append(dict(layer=l, keep=k, importance=sc.float(), kept=pos_new, margin=_margin(sc, k)))
            pos = pos_new
    grid = x if grid is None else write(grid, x, pos)
    grid = vm.post_layernorm(grid)
    out = dict(grid=grid, steps=steps, llm_importance=None, connector_scores=None, llm_margin=None,
               llm_zero_scores=0)
    if not with_connector:
        return out
    c = conn(grid)
    out["connector_out"] = c
    tc = c.shape[1]
    if want_llm:
        full = torch.zeros(B, N, dtype=torch.float32, device=x.device).scatter(1, last_pos, last_imp.float())
        mp = pixel_shuffle_map(conn, N, device=x.device)
        scores = full[:, mp].sum(-1)
        kc = min(keep_count(llm_keep, tc), tc)
        sel = _top_sorted(scores, kc)
        out.update(llm_importance=full, connector_scores=scores, llm_margin=_margin(scores, kc),
                   llm_zero_scores=int((scores == 0).sum(1).max()))
        out["selected"] = sel
        out["image_embeds"] = c.gather(1, sel.unsqueeze(-1).expand(-1, -1, c.shape[-1]))
    else:
        out["selected"] = torch.arange(tc, device=x.device).unsqueeze(0).expand(B, tc)
        out["image_embeds"] = c
    return out


def lm_logits(model, image_embeds, ids, attn_mask=None):
    """Text model over ids with the image embeddings scattered into the <image> positions (in order)."""
    vlm, _, _ = _parts(model)
    emb = vlm.get_input_embeddings()(ids)
    mask = (ids == vlm.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, image_embeds.to(emb.dtype).reshape(-1, emb.shape[-1]))
    if attn_mask is None:
        attn_mask = torch.ones_like(ids)
    h = vlm.model.text_model(inputs_embeds=emb, attention_mask=attn_mask).last_hidden_state
    return vlm.lm_head(h)


def drop_image_tokens(image_id, keep, *rows):
    """Removes all but the first `keep` <image> tokens from each row of ids (rows[0]) and the same positions
    of the other [B, L] tensors (labels, attention mask); every row must hold the same number of image tokens."""
    ids = rows[0]
    img = ids == image_id
    drop = img & (img.long().cumsum(1) > keep)
    n_drop = int(drop[0].sum())
    if n_drop == 0:
        return rows
    order = torch.argsort(drop.int(), dim=1, stable=True)
    L = ids.shape[1] - n_drop
    return tuple(r.gather(1, order)[:, :L] for r in rows)


# ---------------------------------------------------------------------------------------------
# Head removal
# ---------------------------------------------------------------------------------------------

def remove_heads(model, head_mask):
    """Physically deletes heads (in place): rows [h D, (h+1) D) of q/k/v weights and biases, the same columns of
    out_proj's weight. Sets vision_config.num_attention_heads_per_layer and vision_config.head_dim."""
    vlm, vm, _ = _parts(model)
    vcfg = vlm.config.vision_config
    d = vision_head_dim(vcfg)
    heads = parse_heads(head_mask)
    per_layer = []
    for l, layer in enumerate(vm.encoder.layers):
        att = layer.self_attn
        nh = att.q_proj.out_features // d
        keep = [h for h in range(nh) if h not in heads.get(l, set())]
        rows = torch.tensor([h * d + i for h in keep for i in range(d)], dtype=torch.long)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(att, name)
            new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None).to(old.weight)
            with torch.no_grad():
                new.weight.copy_(old.weight[rows])
                if old.bias is not None:
                    new.bias.copy_(old.bias[rows])
            setattr(att, name, new)
        old = att.out_proj
        new = nn.Linear(len(rows), old.out_features, bias=old.bias is not None).to(old.weight)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, rows])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        att.out_proj = new
        att.num_heads = len(keep)
        per_layer.append(len(keep))
    vcfg.num_attention_heads_per_layer = per_layer
    vcfg.head_dim = d
    return per_layer


def write_head_pruned(src_dir, out_dir, head_mask):
    """A head-pruned copy of an exported model (bf16 tensors sliced, so exact): q/k/v rows and out_proj columns
    deleted, vision_config.num_attention_heads_per_layer and head_dim in config.json. transformers cannot load it
    (its attention expects equal heads per layer); edgevlm and load_student here can."""
    from safetensors.torch import load_file, save_file
    src, d = Path(src_dir), Path(out_dir)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "README.md"):
            shutil.copy2(f, d / f.name)
    cfg = json.loads((src / "config.json").read_text())
    vc = cfg["vision_config"]
    hd = vc.get("head_dim") or vc["hidden_size"] // vc["num_attention_heads"]
    nh0 = vc["num_attention_heads"]
    heads = parse_heads(head_mask)
    t = load_file(str(src / "model.safetensors"))
    per_layer = []
    for l in range(vc["num_hidden_layers"]):
        keep = [h for h in range(nh0) if h not in heads.get(l, set())]
        rows = torch.tensor([h * hd + i for h in keep for i in range(hd)], dtype=torch.long)
        pre = f"model.vision_model.encoder.layers.{l}.self_attn."
        for n in ("q_proj", "k_proj", "v_proj"):
            t[pre + n + ".weight"] = t[pre + n + ".weight"][rows].contiguous()
            t[pre + n + ".bias"] = t[pre + n + ".bias"][rows].contiguous()
        t[pre + "out_proj.weight"] = t[pre + "out_proj.weight"][:, rows].contiguous()
        per_layer.append(len(keep))
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    vc["num_attention_heads_per_layer"] = per_layer
    vc["head_dim"] = hd
    cfg["edgevlm"]["head_pruning"] = {"removed": sorted([l, h] for l, hs in heads.items() for h in hs)}
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (d / "README.md").write_text(
        f"# {src.name}, head-pruned\n\nThe vision heads {sorted([l, h] for l, hs in heads.items() for h in hs)} "
        f"(layer, head) of `{src.name}` removed (train/prune.py write_head_pruned): per-layer heads {per_layer}, "
        f"head_dim {hd}. Not loadable by transformers (unequal heads per layer).\n")
    return d


# ---------------------------------------------------------------------------------------------
# Loading and exporting the student
# ---------------------------------------------------------------------------------------------

def load_student(model_dir, device="cpu", attn="sdpa"):
    """The exported student (RoadVLM, float32): Idefics3 weights, fast head and temporal adapter from
    model.safetensors. A head-pruned config (num_attention_heads_per_layer) gets its attention shapes fixed."""
    from safetensors.torch import load_file
    from transformers import Idefics3Config
    model_dir = Path(model_dir)
    cfg = Idefics3Config.from_pretrained(model_dir)
    per_layer = getattr(cfg.vision_config, "num_attention_heads_per_layer", None)
    m = rv.RoadVLM(cfg, attn=attn)
    raw = load_file(str(model_dir / "model.safetensors"))
    if per_layer:
        remove_heads(m, {l: set(range(n, cfg.vision_config.num_attention_heads)) for l, n in enumerate(per_layer)})
    sd = {k: v.float() for k, v in raw.items() if not k.startswith(("fast_head.", "temporal."))}
    missing, unexpected = m.vlm.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    emb = m.vlm.get_input_embeddings().weight
    if m.vlm.lm_head.weight.data_ptr() != emb.data_ptr():
        with torch.no_grad():
            m.vlm.lm_head.weight.copy_(emb)
    m.fast_head.load_state_dict({"weight": raw["fast_head.weight"].float(), "bias": raw["fast_head.bias"].float()})
    ev = json.loads((model_dir / "config.json").read_text()).get("edgevlm", {})
    if "temporal_adapter" in ev:
        m.add_temporal(ev["temporal_adapter"]["heads"])
        m.temporal.load_state_dict({k[len("temporal."):]: v.float() for k, v in raw.items()
                                    if k.startswith("temporal.")})
    return m.float().to(device).eval(), raw


def export_like(model, src_dir, out_dir, card_extra=""):
    """The fine-tuned student in the original's layout: every non-weight file copied, model.safetensors with the
    original's tensor names, shapes and dtypes (bf16) and the original's metadata; README.md gets a section."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    src, d = Path(src_dir), Path(out_dir)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, d / f.name)
    raw = load_file(str(src / "model.safetensors"))
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        meta = f.metadata() or {"format": "pt"}
    vsd = model.vlm.state_dict()
    fh = model.fast_head.state_dict()
    tp = model.temporal.state_dict() if model.temporal is not None else {}
    new = {}
    for k, v in raw.items():
        if k.startswith("fast_head."):
            t = fh[k[len("fast_head."):]]
        elif k.startswith("temporal."):
            t = tp[k[len("temporal."):]]
        else:
            t = vsd[k]
        assert tuple(t.shape) == tuple(v.shape), (k, t.shape, v.shape)
        new[k] = t.detach().to(v.dtype).cpu().contiguous().clone()
    save_file(new, str(d / "model.safetensors"), metadata=meta)
    if card_extra:
        (d / "README.md").write_text((d / "README.md").read_text().rstrip() + "\n\n" + card_extra.strip() + "\n")
    log(f"export: {d}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(d.iterdir())))
    return d


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_dir))


def pixel_values_u8(pix_u8, dtype=torch.float32):
    return ((pix_u8.permute(0, 3, 1, 2).float() * (1 / 255) - 0.5) / 0.5).to(dtype)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_embeds(model, img, prefix, eos, pad, max_new=64):
    """Greedy continuation of the same prefix for every row (full forward per step, as roadvlm.greedy)."""
    B = img.shape[0]
    ids = torch.tensor(prefix, device=img.device).unsqueeze(0).repeat(B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=img.device)
    steps = []
    for _ in range(max_new):
        nxt = lm_logits(model, img, ids)[:, -1].float().argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        steps.append(nxt)
        done = done | (nxt == eos)
        if bool(done.all()):
            break
        ids = torch.cat([ids, torch.where(done, torch.full_like(nxt, pad), nxt).unsqueeze(1)], 1)
    toks = torch.stack(steps, 1).cpu().tolist()
    out = []
    for row in toks:
        out.append(row[:row.index(eos)] if eos in row else row)
    return out


@torch.no_grad()
def score_descriptions(texts, split, hz):
    """Field accuracy of greedy descriptions `texts` against split.records' truth, exact match, a few samples, and the
    fast head's recall / precision from its probabilities hz [N, len(HAZARDS)] (numpy) at threshold 0.5."""
    n = len(texts)
    field_ok = {f: 0 for f in FIELDS}
    exact = 0
    samples = []
    for i, text in enumerate(texts):
        rec = split.records[i]
        got, want = parse_description(text), parse_description(rec["description"])
        exact += all(got.get(f) == want.get(f) for f in FIELDS)
        for f in FIELDS:
            field_ok[f] += got.get(f) == want.get(f)
        if len(samples) < 4:
            samples.append(dict(want=rec["description"], got=text.strip()))
    fast = rv.hazard_metrics(hz, split.hazard_matrix())
    per_field = {f: field_ok[f] / n for f in FIELDS}
    return dict(per_field=per_field, mean_field_accuracy=sum(per_field.values()) / len(FIELDS),
                exact_match=exact / n, fast_head=fast, samples=samples)


def evaluate_pruned(name, model, data, split, tok, ids, schedule="", llm_keep=1.0, random_drop=False, prev=None,
                    batch=750, seed=1234):
    """roadvlm.evaluate with the pruned forward: greedy description of every held-out frame, per-field accuracy,
    exact match, fast head (on the pruned grid) recall/precision. prev [N]: the memory frame of each frame (the
    temporal adapter then runs on the full connector output, before the LLM token selection)."""
    model.eval()
    device = data.device
    n = data.shape[0]
    tconn = model.tokens_per_image
    kc = keep_count(llm_keep, tconn) if llm_keep < 1 else tconn
    prefix = tok(prompt_prefix(DESCRIBE_PROMPT, kc), add_special_tokens=False)["input_ids"]
    gen = torch.Generator(device=device).manual_seed(seed) if random_drop else None
    texts, hz_all = [], []
    for i in range(0, n, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            o = pruned_vision_forward(model, pixel_values_u8(data[i:i + batch]), schedule, llm_keep, random_scores=gen)
            img = o["image_embeds"]
            if prev is not None and model.temporal is not None:
                mem_gen = gen  # the memory frame is pruned with the same schedule
                om = pruned_vision_forward(model, pixel_values_u8(data[prev[i:i + batch]]), schedule, 1.0,
                                           random_scores=mem_gen)
                adapted = model.temporal(o["connector_out"], om["connector_out"])
                img = adapted.gather(1, o["selected"].unsqueeze(-1).expand(-1, -1, adapted.shape[-1]))
            toks = greedy_embeds(model, img, prefix, ids["eos"], ids["pad"])
            hz_all.append(torch.sigmoid(model.fast_head(o["grid"].mean(1)).float()).cpu())
        texts += [tok.decode(t, skip_special_tokens=True) for t in toks]
    scores = score_descriptions(texts, split, torch.cat(hz_all).numpy())
    sched = parse_schedule(schedule)
    vcfg = model.vlm.config.vision_config
    res = dict(schedule=schedule_str(sched), llm_keep=llm_keep, random_drop=random_drop, temporal=prev is not None,
               n_image_tokens=kc, tokens_per_layer=tokens_per_layer((vcfg.image_size // vcfg.patch_size) ** 2,
                                                                     vcfg.num_hidden_layers, sched),
               vision_gflops=vision_gflops(vcfg, sched), frames=n, **scores)
    log(f"eval {name}: mean field accuracy {res['mean_field_accuracy']:.4f}, exact {res['exact_match']:.4f}, "
        f"vision {res['vision_gflops']:.3f} GFLOP, {kc} image tokens")
    return res


def evaluate_all(tag, model, data, split, tok, ids, prev):
    out = {}
    for name, sched, llm, rnd, temporal in EVALS:
        if temporal and model.temporal is None:
            continue
        out[name] = evaluate_pruned(f"{tag} {name}", model, data, split, tok, ids, sched, llm, rnd,
                                    prev=prev if temporal else None)
    return out


# ---------------------------------------------------------------------------------------------
# Pruning-aware fine-tuning
# ---------------------------------------------------------------------------------------------

def finetune(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model_dir, work, out = Path(args.model), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    vc = json.loads((model_dir / "config.json").read_text())["vision_config"]
    size = vc["image_size"]

    # Data: the recipe's training and held-out scenarios at the student's resolution (roadvlm.run_simdump).
    rv.run_simdump(args.simdump, work / f"train_{size}", args.seed, args.scenarios, args.frames, args.every, size)
    rv.run_simdump(args.simdump, work / f"eval_{size}", args.eval_seed, args.eval_scenarios, args.frames,
                   args.eval_every, size)
    train = rv.Split(work / f"train_{size}")
    held = rv.Split(work / f"eval_{size}")
    t_data = time.time() - t_all
    log(f"data: {len(train)} training frames, {len(held)} held-out frames ({t_data:.0f} s)")

    tok = load_tokenizer(model_dir)
    ids = rv.token_ids(tok)
    model, _ = load_student(model_dir, device)
    assert ids["image"] == model.image_token_id, (ids, model.image_token_id)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    n_img = model.tokens_per_image
    seqs = rv.Sequences(train, tok, ids, n_img, device)
    hseqs_prefix = tok(prompt_prefix(DESCRIBE_PROMPT, n_img), add_special_tokens=False)["input_ids"]
    assert hseqs_prefix == seqs.prefix_desc
    data = rv.frames_to_device(train, device)
    hdata = rv.frames_to_device(held, device)
    hazards = torch.from_numpy(train.hazard_matrix()).to(device)
    weights = torch.from_numpy(rv.balance_weights(train)).float().to(device)
    prev_held = torch.from_numpy(rv.previous_frames(held)[:, 0]).to(device)
    prev_train = torch.from_numpy(rv.previous_frames(train)[:, 0]).to(device)
    log(f"setup: sequences of {seqs.length} tokens, {time.time() - t_all:.0f} s")

    results = dict(model=str(model_dir), data=dict(train_frames=len(train), eval_frames=len(held)),
                   args={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
                   train_schedules=TRAIN_SCHEDULES)
    # The original student, evaluated first (also a check of the held-out data against the shipped numbers).
    if not args.skip_eval:
        results["original"] = evaluate_all("original", original, hdata, held, tok, ids, prev_held)
        results["original"]["unpruned (roadvlm.evaluate)"] = rv.evaluate(
            "original (roadvlm.evaluate)", original, hdata, held, rv.Sequences(held, tok, ids, n_img, device), tok,
            ids)
        (out / "results_prune.json").write_text(json.dumps(results, indent=2) + "\n")

    # Training. On args.temporal_frac of the unpruned batches the temporal adapter runs too (memory: the previous
    # stored frame of the scenario, 1 s back, 15% an unrelated frame), so that it follows the tuned features.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    ckpt = work / "prune_ft.pt"
    step, start, hist, skipped = 0, time.time(), [], 0
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, hist, skipped = st["step"], st["hist"], st["skipped"]
        start -= st["elapsed"]
        log(f"finetune: resumed at step {step} ({st['elapsed']:.0f} s done)")
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + step)
    rng = random.Random(args.seed * 1000 + step)
    scheds = [parse_schedule(s) for s in TRAIN_SCHEDULES]
    bs = args.batch
    warm = 50
    t_last = t_saved = time.time()
    kd_t = args.kd_temp
    counts = dict(pruned=0, unpruned=0, llm=0, temporal=0)
    n_train = data.shape[0]

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - start,
                        hist=hist, skipped=skipped), tmp)
        tmp.replace(ckpt)

    model.train()
    while True:
        elapsed = time.time() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed >= args.seconds):
            break
        est = args.steps or max(step + 1, int(step / max(elapsed, 1e-3) * args.seconds))
        frac = min(1.0, step / max(est, 1))
        cur_lr = args.lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        fi = torch.multinomial(weights, bs, replacement=True, generator=gen)
        ci = seqs.pick(fi, gen)
        ids_b, lab, att = seqs.ids[ci], seqs.labels[ci], seqs.attn[ci]
        pruned = rng.random() < args.prune_frac
        sched = rng.choice(scheds) if pruned else []
        llm_keep = args.llm_keep_train if pruned and rng.random() < args.llm_frac else 1.0
        counts["pruned" if pruned else "unpruned"] += 1
        counts["llm"] += llm_keep < 1
        use_mem = not pruned and model.temporal is not None and rng.random() < args.temporal_frac
        counts["temporal"] += use_mem
        pix = data[fi]
        prev_u8 = None
        if use_mem:
            pi = prev_train[fi]
            cut = torch.rand(bs, device=device, generator=gen) < 0.15
            pi = torch.where(cut, torch.randint(0, n_train, (bs,), device=device, generator=gen), pi)
            prev_u8 = data[pi]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with torch.no_grad():
                t_logits, _, t_img = original(pix, ids_b, att, prev_u8)
                t_sel = rv.target_logits(t_logits, lab).float()
            o = pruned_vision_forward(model, pixel_values_u8(pix), sched, llm_keep)
            s_full = o["connector_out"]
            if use_mem:
                with torch.no_grad():
                    mem = pruned_vision_forward(model, pixel_values_u8(prev_u8), [], 1.0)["connector_out"].detach()
                s_full = model.temporal(s_full, mem)
                o["image_embeds"] = s_full  # unpruned: every connector token
            s_ids, s_lab, s_att = ids_b, lab, att
            if llm_keep < 1:
                s_ids, s_lab, s_att = drop_image_tokens(ids["image"], o["image_embeds"].shape[1], ids_b, lab, att)
            logits = lm_logits(model, o["image_embeds"], s_ids, s_att)
            loss_lm = rv.lm_loss(logits, s_lab)
            s_sel = rv.target_logits(logits, s_lab).float()
            loss_kd = F.kl_div(F.log_softmax(s_sel / kd_t, -1), F.log_softmax(t_sel / kd_t, -1), log_target=True,
                               reduction="batchmean") * kd_t * kd_t
            hz = model.fast_head(o["grid"].mean(1))
            loss_fast = F.binary_cross_entropy_with_logits(hz.float(), hazards[fi])
            c, tc = s_full.float(), t_img.float()
            loss_feat = F.mse_loss(F.layer_norm(c, c.shape[-1:]), F.layer_norm(tc, tc.shape[-1:]))
            loss = args.kd_alpha * loss_kd + (1 - args.kd_alpha) * loss_lm + 0.5 * loss_fast + \
                args.feat_beta * loss_feat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not bool(torch.isfinite(norm)) or not bool(torch.isfinite(loss)):
            skipped += 1
            opt.zero_grad(set_to_none=True)
        else:
            opt.step()
        step += 1
        if step % 50 == 0:
            hist.append(dict(step=step, loss=loss.item(), lm=loss_lm.item(), kd=loss_kd.item(), fast=loss_fast.item(),
                             feat=loss_feat.item(), pruned=pruned, schedule=schedule_str(sched), llm_keep=llm_keep,
                             temporal=use_mem,
                             lr=cur_lr, elapsed=time.time() - start))
        if time.time() - t_saved > args.ckpt_every_s:
            save()
            t_saved = time.time()
        if time.time() - t_last > 20 or step == 1:
            t_last = time.time()
            log(f"finetune: step {step}/{est} loss {loss.item():.4f} (lm {loss_lm.item():.4f} kd {loss_kd.item():.4f} "
                f"fast {loss_fast.item():.4f} feat {loss_feat.item():.4f}) [{schedule_str(sched) or 'unpruned'}"
                f"{' llm%.2g' % llm_keep if llm_keep < 1 else ''}{' +memory' if use_mem else ''}] lr {cur_lr:.2e} skipped {skipped} "
                f"{time.time() - start:.0f}/{args.seconds:.0f} s")
    elapsed = time.time() - start
    save()
    model.eval()
    log(f"finetune: {step} steps in {elapsed:.0f} s ({step * bs / max(elapsed, 1e-3):.0f} samples/s), {counts}")
    results["train"] = dict(steps=step, seconds=elapsed, batch=bs, lr=args.lr, skipped=skipped, counts=counts,
                            history=hist)

    # Export (bf16, the original's layout), then evaluate the exported weights (reloaded: what ships).
    card = (f"## Pruning-aware fine-tuning (train/prune.py finetune)\n\n"
            f"Fine-tuned from `{model_dir.name}` for {step} steps (batch {bs}, AdamW lr {args.lr}, cosine, "
            f"{elapsed:.0f} s): on {args.prune_frac:.0%} of the batches the vision tower ran with a token-pruning "
            f"schedule drawn from {sorted(set(TRAIN_SCHEDULES))} ({args.llm_frac:.0%} of those also with "
            f"llm_keep {args.llm_keep_train}), the rest unpruned; loss {args.kd_alpha} KL to the original student's "
            f"next-token distribution (T {kd_t}) + {1 - args.kd_alpha:g} CE + 0.5 fast-head BCE on the pruned grid + "
            f"{args.feat_beta} LN-MSE of the connector output to the original's. On {args.temporal_frac:.0%} of the "
            f"unpruned batches the temporal adapter ran too (memory: the previous stored frame, 1 s back) and was "
            f"tuned with the rest. Held-out results: results_prune.json.")
    sdir = export_like(model, model_dir, out / "road-student-pruneft", card)
    results["seconds_to_export"] = time.time() - t_all
    (out / "results_prune.json").write_text(json.dumps(results, indent=2) + "\n")
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Goldens of the fine-tuned student (CPU, float32): roadvlm's student goldens (same frames and arguments as the
    # recipe) and the prune goldens (same frames as tests/fixtures/prune-golden).
    sg = out / "student-golden"
    rv.write_golden(sdir, held, [0, len(held) // 2], sg)
    pv = rv.previous_frames(held)
    cur = [i for i in range(len(held)) if pv[i, 0] != i][:2]
    rv.write_temporal_golden(sdir, held, [(int(pv[i, 0]), i) for i in cur], sg)
    same = compare_frames(sg, REPO / "tests/fixtures/student-golden")
    results["student_golden_frames_match_shipped"] = same
    log(f"student-golden frames equal the shipped fixtures' frames: {same}")
    make_prune_golden(sdir, sg, out / "prune-golden-ft", pixel_ref="../student-golden")
    (out / "results_prune.json").write_text(json.dumps(results, indent=2) + "\n")

    # The exported (bf16) weights, reloaded, on the held-out scenarios.
    ft, _ = load_student(sdir, device)
    if not args.skip_eval:
        results["finetuned"] = {}
        for name, sched, llm, rnd, temporal in EVALS:
            if temporal and ft.temporal is None:
                continue
            results["finetuned"][name] = evaluate_pruned(f"finetuned {name}", ft, hdata, held, tok, ids, sched, llm,
                                                         rnd, prev=prev_held if temporal else None)
            (out / "results_prune.json").write_text(json.dumps(results, indent=2) + "\n")
        results["finetuned"]["unpruned (roadvlm.evaluate)"] = rv.evaluate(
            "finetuned (roadvlm.evaluate)", ft, hdata, held, rv.Sequences(held, tok, ids, n_img, device), tok, ids)
        results["summary"] = {name: dict(original=results["original"][name]["mean_field_accuracy"],
                                         finetuned=results["finetuned"][name]["mean_field_accuracy"],
                                         vision_gflops=results["finetuned"][name].get("vision_gflops"))
                              for name in results["finetuned"]}
        log("summary (mean field accuracy original -> finetuned):")
        for name, s in results["summary"].items():
            log(f"  {name:28s} {s['original']:.4f} -> {s['finetuned']:.4f}")
        (sdir / "README.md").write_text((sdir / "README.md").read_text().rstrip() + "\n\n" + results_table(results))
    results["seconds"] = time.time() - t_all
    (out / "results_prune.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"finetune done in {time.time() - t_all:.0f} s")


def results_table(results):
    """Markdown: held-out mean field accuracy / exact match of the original and the fine-tuned student."""
    lines = ["### Held-out scenarios with pruning (train/prune.py, greedy, 1500 frames)", "",
             "| setting | image tokens | vision GFLOP | original | fine-tuned | exact (orig / ft) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, f in results["finetuned"].items():
        o = results["original"][name]
        if "vision_gflops" not in f:
            continue
        lines.append(f"| {name} | {f['n_image_tokens']} | {f['vision_gflops']:.3f} | {o['mean_field_accuracy']:.4f} | "
                     f"{f['mean_field_accuracy']:.4f} | {o['exact_match']:.4f} / {f['exact_match']:.4f} |")
    return "\n".join(lines) + "\n"


def compare_frames(a, b):
    from PIL import Image
    out = {}
    for p in sorted(Path(b).glob("*.png")):
        q = Path(a) / p.name
        out[p.name] = bool(q.exists() and np.array_equal(np.asarray(Image.open(q)), np.asarray(Image.open(p))))
    return out


# ---------------------------------------------------------------------------------------------
# Golden tensors
# ---------------------------------------------------------------------------------------------

def _tensor_list(d):
    names = {torch.float32: "F32", torch.int32: "I32", torch.int64: "I64"}
    return [dict(name=k, dtype=names[v.dtype], shape=list(v.shape)) for k, v in d.items()]


@torch.no_grad()
def make_prune_golden(model_dir, frames_dir, out_dir, pixel_ref="../student-golden", n_new=48):
    """Golden tensors of the pruned forward for the exported model in model_dir, float32 on the CPU (eager),
    for frames_dir/frame{0,1}.png with the processor's pixel_values exactly as roadvlm.write_golden makes them
    (they equal frames_dir/case{k}.safetensors' pixel_values, which this checks, so they are not stored again)."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration
    import transformers
    torch.use_deterministic_algorithms(True)
    model_dir, frames_dir, out = Path(model_dir), Path(frames_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    m = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                         attn_implementation="eager").float().eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    tok = proc.tokenizer
    vcfg = m.config.vision_config
    n = (vcfg.image_size // vcfg.patch_size) ** 2
    tconn = n // m.config.scale_factor ** 2
    checks = {}
    frames = []
    pvs = []
    for k in range(2):
        img = Image.open(frames_dir / f"frame{k}.png").convert("RGB")
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE_PROMPT}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = proc(text=prompt, images=[[img]], return_tensors="pt")
        pv = inputs["pixel_values"][:, 0].float().contiguous()  # [1, 3, S, S]
        ref = load_file(str(frames_dir / f"case{k}.safetensors"))
        checks[f"frame{k}_pixel_values_equal_student_golden"] = bool(torch.equal(ref["pixel_values"], pv))
        assert checks[f"frame{k}_pixel_values_equal_student_golden"], "pixel_values differ from student-golden"
        want_ids = tok(prompt_prefix(DESCRIBE_PROMPT, tconn), add_special_tokens=False)["input_ids"]
        checks[f"frame{k}_prompt_ids_equal_processor"] = want_ids == inputs["input_ids"][0].tolist()
        assert checks[f"frame{k}_prompt_ids_equal_processor"]
        # The unpruned reference forward equals transformers' vision tower and connector.
        full = pruned_vision_forward(m, pv, [], 1.0)
        tv = m.model.vision_model(pixel_values=pv).last_hidden_state
        checks[f"frame{k}_unpruned_vs_transformers_vision_maxabs"] = float((full["grid"] - tv).abs().max())
        checks[f"frame{k}_unpruned_vs_student_golden_vision_maxabs"] = float((full["grid"] - ref["vision_out"]).abs().max())
        checks[f"frame{k}_unpruned_vs_transformers_connector_maxabs"] = float(
            (full["connector_out"] - m.model.connector(tv)).abs().max())
        assert checks[f"frame{k}_unpruned_vs_transformers_vision_maxabs"] < 1e-4, checks
        # Eager attention probabilities of transformers equal ours (importance of every layer).
        try:
            ho = m.model.vision_model(pixel_values=pv, output_attentions=True)
        except Exception as e:  # only a cross-check
            log(f"output_attentions not available: {e}")
            ho = None
        if ho is not None and getattr(ho, "attentions", None):
            o1 = pruned_vision_forward(m, pv, [(l, 1.0) for l in range(vcfg.num_hidden_layers)], 1.0)
            dif = max(float((st["importance"] - a.sum(dim=(1, 2)) / (a.shape[1] * a.shape[2])).abs().max())
                      for st, a in zip(o1["steps"], ho.attentions))
            checks[f"frame{k}_importance_vs_transformers_attentions_maxabs"] = dif
        pvs.append(pv)
        frames.append(dict(image=f"{pixel_ref}/frame{k}.png",
                           pixel_values=dict(file=f"{pixel_ref}/case{k}.safetensors", tensor="pixel_values",
                                             dtype="F32", shape=list(pv.shape))))
    mp = pixel_shuffle_map(m.model.connector, n)
    cases = []
    for tag, sched_s, llm_keep in GOLDEN_CASES:
        sched = parse_schedule(sched_s)
        for k, pv in enumerate(pvs):
            o = pruned_vision_forward(m, pv, sched, llm_keep)
            t = {}
            for i, st in enumerate(o["steps"]):
                t[f"importance_{i}"] = st["importance"].float().contiguous()
                t[f"kept_{i}"] = st["kept"].to(torch.int32).contiguous()
            t["grid"] = o["grid"].contiguous()
            t["connector_out"] = o["connector_out"].contiguous()
            if llm_keep < 1:
                t["llm_importance"] = o["llm_importance"].contiguous()
                t["connector_scores"] = o["connector_scores"].contiguous()
            t["selected"] = o["selected"].to(torch.int32).contiguous()
            kc = o["selected"].shape[1]
            ids = torch.tensor([tok(prompt_prefix(DESCRIBE_PROMPT, kc), add_special_tokens=False)["input_ids"]])
            t["input_ids"] = ids[0].to(torch.int64).contiguous()
            first = lm_logits(m, o["image_embeds"], ids)[0, -1].float()
            t["logits_first"] = first.contiguous()
            seq, toks = ids, []
            for _ in range(n_new):
                nt = int(lm_logits(m, o["image_embeds"], seq)[0, -1].argmax())
                toks.append(nt)
                seq = torch.cat([seq, torch.tensor([[nt]])], 1)
            name = f"{tag}_frame{k}"
            save_file(t, str(out / f"{name}.safetensors"))
            cases.append(dict(name=name, kind="token_prune", frame=k, schedule=[[l, r] for l, r in sched],
                              schedule_str=schedule_str(sched), llm_keep=llm_keep,
                              keep_counts=[st["keep"] for st in o["steps"]],
                              tokens_per_layer=tokens_per_layer(n, vcfg.num_hidden_layers, sched),
                              n_image_tokens=kc, file=f"{name}.safetensors", tensors=_tensor_list(t),
                              selection_margins=[st["margin"] for st in o["steps"]], llm_margin=o["llm_margin"],
                              llm_zero_scores=o["llm_zero_scores"],
                              prompt=prompt_prefix(DESCRIBE_PROMPT, kc), greedy_tokens=toks,
                              greedy_text=tok.decode(toks, skip_special_tokens=True)))
            log(f"prune golden {name}: keep {cases[-1]['keep_counts']}, {kc} image tokens, margins "
                f"{cases[-1]['selection_margins']} / {o['llm_margin']}: {cases[-1]['greedy_text'].strip()!r}")
    # Head masking, checked against physical removal (also with a schedule: same importance and kept tokens).
    mp_model = copy.deepcopy(m)
    per_layer = remove_heads(mp_model, GOLDEN_HEADS)
    for k, pv in enumerate(pvs):
        o = pruned_vision_forward(m, pv, [], 1.0, head_mask=GOLDEN_HEADS, with_connector=False)
        o2 = pruned_vision_forward(mp_model, pv, [], 1.0, with_connector=False)
        checks[f"frame{k}_head_mask_vs_removed_maxabs"] = float((o["grid"] - o2["grid"]).abs().max())
        s = parse_schedule(DEFAULT_SCHEDULE)
        a = pruned_vision_forward(m, pv, s, 0.5, head_mask=GOLDEN_HEADS)
        b = pruned_vision_forward(mp_model, pv, s, 0.5)
        checks[f"frame{k}_head_mask_vs_removed_pruned_grid_maxabs"] = float((a["grid"] - b["grid"]).abs().max())
        checks[f"frame{k}_head_mask_vs_removed_same_kept"] = all(
            torch.equal(x["kept"], y["kept"]) for x, y in zip(a["steps"], b["steps"])) and torch.equal(
            a["selected"], b["selected"])
        checks[f"frame{k}_head_mask_vs_removed_importance_maxabs"] = max(
            float((x["importance"] - y["importance"]).abs().max()) for x, y in zip(a["steps"], b["steps"]))
        assert checks[f"frame{k}_head_mask_vs_removed_maxabs"] < 1e-5, checks
        if not checks[f"frame{k}_head_mask_vs_removed_same_kept"]:
            log(f"WARNING: frame{k}: head-masked and head-removed forwards kept different tokens (a near tie)")
        unmasked = pruned_vision_forward(m, pv, [], 1.0, with_connector=False)
        checks[f"frame{k}_head_mask_changes_output_maxabs"] = float((o["grid"] - unmasked["grid"]).abs().max())
        t = {"vision_out": o["grid"].contiguous()}
        name = f"heads_frame{k}"
        save_file(t, str(out / f"{name}.safetensors"))
        cases.append(dict(name=name, kind="head_mask", frame=k, heads=[list(h) for h in GOLDEN_HEADS],
                          heads_per_layer_after_removal=per_layer, schedule=[], llm_keep=1.0,
                          file=f"{name}.safetensors", tensors=_tensor_list(t)))
    md = model_dir.resolve()
    if md.is_relative_to(REPO):
        model_ref = dict(model=str(md.relative_to(REPO)), model_path_base="repository root")
    else:
        model_ref = dict(model=os.path.relpath(md, out.resolve()), model_path_base="this directory")
    meta = dict(
        **model_ref, dtype="float32", device="cpu", attention="eager (transformers' operation order)",
        torch=torch.__version__, transformers=transformers.__version__,
        num_patches=n, connector_tokens=tconn, scale_factor=m.config.scale_factor,
        head_dim=vision_head_dim(vcfg), num_heads=vcfg.num_attention_heads, num_layers=vcfg.num_hidden_layers,
        keep_count="max(1, floor(r * N + 0.5)); connector: max(1, floor(llm_keep * T_conn + 0.5))",
        importance="imp[b, j] = 1/(H T) sum_h sum_i softmax_j(scale q_i . k_j)[b, h, i, j], float32, over the "
                   "tokens that entered the scored layer; with masked heads H counts the unmasked ones",
        selection="k highest importance, ties to the lower current index, kept in ascending original position",
        margins="selection_margins[i]: gap between the k-th and (k+1)-th highest importance at step i; llm_margin: "
                "the same for the connector scores (0.0 with llm_zero_scores > 0: connector tokens none of whose "
                "vision tokens survived score exactly 0 and the tie goes to the lower index)",
        frames=frames, pixel_shuffle_map=mp.tolist(), checks=checks, cases=cases,
        tensors_doc={
            "importance_i": "[1, T_i] float32: importance at the i-th scored layer (schedule[i][0]) over the T_i "
                            "tokens that entered it, in ascending original position",
            "kept_i": "[1, k_i] int32: original positions (0..N-1) of the tokens kept after that layer, ascending",
            "grid": "[1, N, E] float32: post_layernorm of the grid (each token's state from the layer where it was "
                    "dropped, the survivors' after the last layer)",
            "connector_out": "[1, T_conn, Ht] float32: connector (pixel shuffle + projection) of the whole grid",
            "llm_importance": "[1, N] float32 (llm_keep < 1 only): last layer's importance at the original "
                              "positions, 0 for tokens dropped earlier",
            "connector_scores": "[1, T_conn] float32 (llm_keep < 1 only): sum of llm_importance over "
                                "pixel_shuffle_map[t]",
            "selected": "[1, k_conn] int32: connector tokens given to the LLM, ascending (all for llm_keep 1)",
            "input_ids": "[L] int64: the prompt with k_conn <image> tokens",
            "logits_first": "[V] float32: logits at the last prompt position with connector_out[selected] at the "
                            "<image> positions; greedy_tokens: 48 argmax steps, full forward, no EOS stop",
            "vision_out": "[1, N, E] float32 (head_mask cases): post_layernorm output with the heads masked, no "
                          "token pruning"})
    (out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    log("prune golden checks: " + json.dumps(checks))
    log(f"prune golden: {out}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(out.iterdir())) +
        f"; {total} bytes")
    torch.use_deterministic_algorithms(False)
    return meta


def golden(args):
    torch.set_num_threads(args.threads)
    meta = make_prune_golden(args.model, args.frames, args.out, pixel_ref=args.pixel_ref)
    if args.head_pruned_out:
        d = write_head_pruned(args.model, args.head_pruned_out, GOLDEN_HEADS)
        m, _ = load_student(d)
        from safetensors.torch import load_file
        for k in range(2):
            pv = load_file(str(Path(args.frames) / f"case{k}.safetensors"))["pixel_values"]
            o = pruned_vision_forward(m, pv, [], 1.0, with_connector=False)
            ref = load_file(str(Path(args.out) / f"heads_frame{k}.safetensors"))["vision_out"]
            log(f"head-pruned model {d}: frame{k} vision_out vs the head-masked golden: max abs "
                f"{float((o['grid'] - ref).abs().max()):.3g}")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finetune", help="pruning-aware fine-tuning of the student, evaluation, export, goldens")
    f.add_argument("--simdump", required=True)
    f.add_argument("--model", default=str(REPO / "models/road-student"))
    f.add_argument("--work", required=True, help="data and checkpoint (resumable)")
    f.add_argument("--out", required=True, help="road-student-pruneft/, results_prune.json, student-golden/, "
                                                "prune-golden-ft/")
    f.add_argument("--smoke", action="store_true", help="tiny data and budget: checks the whole path")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--scenarios", type=int, default=10000)
    f.add_argument("--frames", type=int, default=150)
    f.add_argument("--every", type=int, default=30)
    f.add_argument("--eval-seed", type=int, default=1_000_000)
    f.add_argument("--eval-scenarios", type=int, default=300)
    f.add_argument("--eval-every", type=int, default=30)
    f.add_argument("--seconds", type=float, default=240, help="wall-time budget of the training loop")
    f.add_argument("--steps", type=int, default=0, help="fixed steps instead of --seconds")
    f.add_argument("--batch", type=int, default=128)
    f.add_argument("--lr", type=float, default=2e-4)
    f.add_argument("--prune-frac", type=float, default=0.5, help="share of batches with a pruning schedule")
    f.add_argument("--llm-frac", type=float, default=0.25, help="share of the pruned batches with llm_keep < 1")
    f.add_argument("--llm-keep-train", type=float, default=0.5)
    f.add_argument("--kd-temp", type=float, default=2.0)
    f.add_argument("--kd-alpha", type=float, default=0.5)
    f.add_argument("--feat-beta", type=float, default=0.5)
    f.add_argument("--temporal-frac", type=float, default=0.25,
                   help="share of the unpruned batches that run the temporal adapter with a memory frame")
    f.add_argument("--ckpt-every-s", type=float, default=60)
    f.add_argument("--skip-eval", action="store_true")
    g = sub.add_parser("golden", help="prune golden tensors (float32, CPU)")
    g.add_argument("--model", default=str(REPO / "models/road-student"))
    g.add_argument("--frames", default=str(REPO / "tests/fixtures/student-golden"),
                   help="frame{0,1}.png and case{0,1}.safetensors (pixel_values) of roadvlm.write_golden")
    g.add_argument("--out", default=str(REPO / "tests/fixtures/prune-golden"))
    g.add_argument("--pixel-ref", default="../student-golden",
                   help="where golden.json says the frames and pixel values are, relative to --out")
    g.add_argument("--head-pruned-out", default="", help="also write a head-pruned copy of the model here")
    g.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    if args.cmd == "finetune":
        if args.smoke:
            args.scenarios, args.frames, args.eval_scenarios = 64, 60, 8
            args.seconds, args.batch = min(args.seconds, 20), 16
        finetune(args)
    else:
        golden(args)


if __name__ == "__main__":
    main()
