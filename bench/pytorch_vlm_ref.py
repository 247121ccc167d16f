#!/usr/bin/env python3
"""PyTorch / transformers reference timings for the CUDA targets of issue 7.

Run on the same GPU in the same command as build-node/bench_cuda, so that the ratios compare like with like:

  python3 bench/pytorch_vlm_ref.py [--json FILE] [--no-compile] [--repeats N]

The model is SmolVLM-256M's shape (Idefics3: SigLIP base-patch16-512 vision tower, pixel-shuffle 4 connector,
SmolLM2-135M text model) with random weights in bf16, built from the config alone (nothing is downloaded).

  tile     vision tower + connector on one 512-px tile, batch 1: eager, and torch.compile (default mode)
  batch    the same, eager, at batch 32 and 64: tiles per second
  decode   the text model's greedy generate(): 128 new tokens after a 64-token prompt, tokens per second

Timings are wall-clock medians around torch.cuda.synchronize(); pixels are already on the GPU (bench_cuda's
figures include the upload of the pixels and the download of the embeddings, so the comparison favours PyTorch).
"""
import argparse
import json
import statistics
import sys
import time

import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration


def smolvlm_256m_config():
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=512, patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
                max_position_embeddings=8192, tie_word_embeddings=False, hidden_act="silu")
    return Idefics3Config(vision_config=vision, text_config=text, scale_factor=4, image_token_id=49190,
                          tie_word_embeddings=False)


def timed(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers
    res["transformers"] = transformers.__version__
    model = Idefics3ForConditionalGeneration(smolvlm_256m_config()).to(dev, dtype=torch.bfloat16).eval()
    vision, connector = model.model.vision_model, model.model.connector

    def encode(px):
        h = vision(pixel_values=px).last_hidden_state
        return connector(h)

    with torch.inference_mode():
        px1 = torch.rand(1, 3, 512, 512, device=dev, dtype=torch.bfloat16) * 2 - 1
        t = timed(lambda: encode(px1), a.repeats)
        res["tile_eager_ms"] = t * 1e3
        print(f"  pytorch vision eager     batch   1: {t * 1e3:8.3f} ms", flush=True)
        for b in (32, 64):
            pxb = torch.rand(b, 3, 512, 512, device=dev, dtype=torch.bfloat16) * 2 - 1
            t = timed(lambda: encode(pxb), max(5, a.repeats // 3))
            res[f"batch{b}_eager_tiles_per_s"] = b / t
            print(f"  pytorch vision eager     batch {b:3d}: {t * 1e3:8.3f} ms  {b / t:8.0f} tiles/s", flush=True)
        if not a.no_compile:
            try:
                cenc = torch.compile(encode)
                t = timed(lambda: cenc(px1), a.repeats, warmup=5)
                res["tile_compile_ms"] = t * 1e3
                print(f"  pytorch vision compile   batch   1: {t * 1e3:8.3f} ms", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                res["tile_compile_error"] = str(e)[:300]
                print("  torch.compile failed:", str(e)[:300], flush=True)
        lm = model  # generate() on text ids only (no image tokens): the text model's decode
        ids = torch.randint(0, 49000, (1, 64), device=dev)
        ids[ids == 49190] = 1
        n_new = 128

        def gen():
            lm.generate(input_ids=ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)

        t = timed(gen, 3, warmup=1)
        res["decode_generate_tokens_per_s"] = n_new / t
        print(f"  transformers generate   : {n_new / t:8.1f} tokens/s ({t * 1e3 / n_new:.2f} ms/token incl. prefill)",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
