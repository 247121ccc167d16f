#!/usr/bin/env bash
# Fuzzing of the file parsers (tests/fuzz/fuzz_*.cpp: fuzz_safetensors, fuzz_json, and fuzz_tokenizer from the
# tokenizer layer when present).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   build each target with clang -fsanitize=fuzzer,address,undefined and
#                                           run it for SECONDS (default 60), starting from its seed corpus.
#                                           New inputs go to build-fuzz/corpus/<target>/ (the committed seeds are
#                                           never modified); crashes to build-fuzz/crashes/<target>/.
#   scripts/fuzz.sh seeds                   regenerate the seed corpora under tests/fuzz/corpus/ (python3).
#
# Without clang (apt package clang), the same targets still build with g++ as replay programs through CMake
# (tests/fuzz/replay_main.cpp) and run their corpus as the ctest "<target>_replay"; configure with
# -DEDGEVLM_SANITIZE=ON to replay under ASan/UBSan.
#
# Environment: BUILD_DIR (default build-fuzz), CXX (default clang++), JOBS (default 2: the machines are shared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

make_seeds() {
  python3 - "$ROOT/tests/fuzz/corpus" <<'PY'
import json, os, struct, sys

root = sys.argv[1]

def st(header, data=b"", pad=True):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, (bytes, str)) else (
        header.encode() if isinstance(header, str) else header)
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data

def entry(dtype, shape, b, e):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}

def write(sub, name, data):
    d = os.path.join(root, sub)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 4096, name
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

S = "fuzz_safetensors"
f32 = struct.pack("<6f", 0.5, -1.0, 2.0, 3.25, -0.0, 1e-3)
i64 = struct.pack("<2q", 7, -9)
write(S, "valid_f32_i64.safetensors",
      st({"__metadata__": {"format": "pt"}, "i": entry("I64", [2], 0, 16), "w": entry("F32", [2, 3], 16, 40)},
         i64 + f32))
sizes = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
         "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
hdr, off = {}, 0
for dt, sz in sizes.items():
    hdr["t_" + dt.lower()] = entry(dt, [3], off, off + 3 * sz)
    off += 3 * sz
write(S, "valid_all_dtypes.safetensors", st(hdr, bytes(i % 251 for i in range(off))))
write(S, "valid_scalar_empty_rank4.safetensors",
      st({"s": entry("F32", [], 0, 4), "e": entry("F32", [0, 5], 4, 4), "r": entry("U8", [1, 2, 1, 2], 4, 8),
          "r5": entry("U8", [1, 1, 1, 1, 1], 8, 9)}, bytes(range(9))))
write(S, "valid_misaligned.safetensors", st({"x": entry("F32", [2], 2, 10)}, b"\0\0" + f32[:8]))
write(S, "valid_empty_header.safetensors", st({}))
write(S, "valid_unpadded.safetensors", st({"b": entry("BF16", [2], 0, 4)}, b"\x80\x3f\x00\x40", pad=False))
write(S, "bad_short", b"\x05\x00\x00")
write(S, "bad_header_len", struct.pack("<Q", 5000) + b"{}")
write(S, "bad_header_absurd", struct.pack("<Q", 1 << 62) + b"{}")
write(S, "bad_not_json.safetensors", st(b"{not json"))
write(S, "bad_array.safetensors", st([1, 2, 3]))
write(S, "bad_offsets_range.safetensors", st({"x": entry("F32", [10], 0, 99)}, bytes(40)))
write(S, "bad_begin_after_end.safetensors", st({"x": entry("F32", [0], 8, 4)}, bytes(16)))
write(S, "bad_size_mismatch.safetensors", st({"x": entry("F32", [3], 0, 8)}, bytes(16)))
write(S, "bad_overflow.safetensors", st({"x": entry("F32", [1 << 40, 1 << 40], 0, 4)}, bytes(4)))
write(S, "bad_negative_dim.safetensors", st({"x": entry("F32", [-1, 4], 0, 4)}, bytes(4)))
write(S, "bad_unknown_dtype.safetensors", st({"x": entry("Q4", [1], 0, 1)}, bytes(1)))
write(S, "bad_missing_fields.safetensors", st({"x": {"dtype": "F32"}}, bytes(4)))
write(S, "bad_metadata.safetensors", st({"__metadata__": {"a": {"b": [1]}}}))
write(S, "bad_deep.safetensors", st(b"[" * 400 + b"]" * 400))

J = "fuzz_json"
idefics3 = {
    "architectures": ["Idefics3ForConditionalGeneration"], "image_token_id": 49190, "model_type": "idefics3",
    "scale_factor": 4, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "text_config": {"head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
                    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
                    "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "rms_norm_eps": 1e-05,
                    "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": False,
                    "vocab_size": 49280},
    "vision_config": {"hidden_size": 768, "image_size": 512, "intermediate_size": 3072, "model_type": "idefics3",
                      "num_attention_heads": 12, "num_hidden_layers": 12, "patch_size": 16},
}
write(J, "idefics3_config.json", json.dumps(idefics3, indent=1))
tiny = {
    "architectures": ["SmolVLMForConditionalGeneration"], "model_type": "smolvlm", "image_token_id": 100,
    "scale_factor": 2, "bos_token_id": 1, "eos_token_id": [2, 3], "dtype": "float32",
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": 64, "patch_size": 8},
}
write(J, "smolvlm_tiny_config.json", json.dumps(tiny))
write(J, "minimal_config.json", json.dumps({"model_type": "idefics3", "vision_config": {"image_size": 256},
                                            "text_config": {"vocab_size": 200000}}))
bad = json.loads(json.dumps(tiny))
bad["text_config"]["num_attention_heads"] = "4"
write(J, "bad_type_config.json", json.dumps(bad))
bad = json.loads(json.dumps(tiny))
bad["text_config"]["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
write(J, "bad_rope_config.json", json.dumps(bad))
bad = json.loads(json.dumps(tiny))
bad["scale_factor"] = 3
write(J, "bad_scale_config.json", json.dumps(bad))
write(J, "bad_syntax.json", '{"model_type": "idefics3", "text_config": {')
write(J, "preprocessor_config.json", json.dumps({
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Idefics3ImageProcessor", "max_image_size": {"longest_edge": 64}, "resample": 1,
    "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 192}, "image_seq_len": 16}))
write(J, "tokenizer_config.json", json.dumps({
    "add_bos_token": False, "bos_token": {"content": "<|im_start|>", "lstrip": False},
    "eos_token": "<end_of_utterance>", "pad_token": None, "model_max_length": 8192,
    "additional_special_tokens": ["<image>", {"content": "<fake_token_around_image>"}],
    "chat_template": [{"name": "default", "template": "{% for m in messages %}{{ m['role'] }}{% endfor %}"}]}))
write(J, "deep.json", "[" * 300 + "]" * 300)
K = "fuzz_tokenizer"
tiny_tok = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 6, "content": "<image>", "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120ab": 4, "c": 5},
              "merges": ["a b", "\u0120 ab"]}}
write(K, "json_tiny", "J" + json.dumps(tiny_tok))
bad = json.loads(json.dumps(tiny_tok)); bad["model"]["merges"] = ["a zz"]
write(K, "json_bad_merge", "J" + json.dumps(bad))
bad = json.loads(json.dumps(tiny_tok)); bad["model"]["type"] = "Unigram"
write(K, "json_unsupported_model", "J" + json.dumps(bad))
bad = json.loads(json.dumps(tiny_tok)); bad["added_tokens"][0]["id"] = -3
write(K, "json_bad_added_id", "J" + json.dumps(bad))
bad = json.loads(json.dumps(tiny_tok)); bad["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}
write(K, "json_bad_regex", "J" + json.dumps(bad))
write(K, "json_truncated", "J" + json.dumps(tiny_tok)[:120])
write(K, "text_ascii", "TThe light is red; pedestrian crossing left.  \n\t 12345 km/h")
write(K, "text_unicode", "T\u00e9t\u00e9 \u65e5\u672c\u8a9e \U0001F697\U0001F6A6 \u0645\u0631\u062d\u0628\u0627 \u00a0\u2028")
write(K, "text_special", "T<|im_start|>User:<image><image>Hi<end_of_utterance>\nAssistant:")
write(K, "text_invalid_utf8", b"T\xff\xfe\xc3(\xe2\x82 ok \xf0\x9f\x98")
write(K, "chat_idefics3", "C<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
write(K, "chat_string_content", "C{% for m in messages %}{{ m.role }}: {{ m.content if m.content is string else m.content|length }}\n{% endfor %}")
write(K, "chat_unclosed", "C{% for m in messages %}{{ m.role ")
write(K, "chat_raise", "C{{ raise_exception('no system role') }}")
write(K, "chat_deep_loop", "C{% for a in range(100) %}{% for b in range(100) %}{{ a * b }}{% endfor %}{% endfor %}")
print("seeds written under", root)
PY
}

if [[ "${1:-}" == "seeds" ]]; then
  make_seeds
  exit 0
fi

SECONDS_PER_TARGET="${1:-60}"
shift || true
CXX="${CXX:-clang++}"
BUILD_DIR="${BUILD_DIR:-build-fuzz}"
JOBS="${JOBS:-2}"
if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "fuzz.sh: $CXX not found (apt-get install clang). The corpus replay still runs under ctest." >&2
  exit 1
fi

TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  for f in tests/fuzz/fuzz_*.cpp; do TARGETS+=("$(basename "$f" .cpp)"); done
fi

mkdir -p "$BUILD_DIR/obj"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CXXFLAGS=(-std=c++20 -O1 -g -march=x86-64-v3 -Isrc -Iinclude $SAN -fsanitize=fuzzer-no-link
          "-DEDGEVLM_FIXTURE_DIR=\"$ROOT/tests/fixtures\"")

# One static archive per layer the targets may need. A layer that does not compile (work in progress elsewhere)
# is skipped with a warning; only targets that need it then fail to link.
ARCHIVES=()
for layer in core formats text; do
  srcs=(src/$layer/*.cpp)
  [[ -e "${srcs[0]}" ]] || continue
  objs=()
  pids=()
  failed=0
  for s in "${srcs[@]}"; do
    o="$BUILD_DIR/obj/$(echo "$s" | tr / _).o"
    objs+=("$o")
    # Rebuild when the source or any header of the tree is newer than the object.
    if [[ ! -f "$o" || "$s" -nt "$o" || -n "$(find src include -name '*.h' -newer "$o" 2>/dev/null | head -1)" ]]; then
      "$CXX" "${CXXFLAGS[@]}" -c "$s" -o "$o" &
      pids+=($!)
    fi
    while [[ $(jobs -r | wc -l) -ge $JOBS ]]; do sleep 0.2; done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if [[ $failed -ne 0 ]]; then
    echo "fuzz.sh: warning: layer src/$layer did not compile; targets needing it will not link" >&2
    continue
  fi
  rm -f "$BUILD_DIR/lib$layer.a"
  ar rcs "$BUILD_DIR/lib$layer.a" "${objs[@]}"
  ARCHIVES+=("$BUILD_DIR/lib$layer.a")
done
# Archives are listed twice so that an upper layer's references into a lower one resolve regardless of order.
LINK=("${ARCHIVES[@]}" "${ARCHIVES[@]}" -lpthread)
if pkg-config --exists libpcre2-8 2>/dev/null; then LINK+=($(pkg-config --libs libpcre2-8)); fi

status=0
for t in "${TARGETS[@]}"; do
  src="tests/fuzz/$t.cpp"
  if [[ ! -f "$src" ]]; then
    echo "fuzz.sh: no $src" >&2
    status=1
    continue
  fi
  exe="$BUILD_DIR/$t"
  echo "== building $t"
  if ! "$CXX" "${CXXFLAGS[@]}" -fsanitize=fuzzer "$src" "${LINK[@]}" -o "$exe"; then
    echo "fuzz.sh: $t failed to build" >&2
    status=1
    continue
  fi
  work="$BUILD_DIR/corpus/$t"
  crashes="$BUILD_DIR/crashes/$t"
  mkdir -p "$work" "$crashes"
  seeds=()
  [[ -d "tests/fuzz/corpus/$t" ]] && seeds+=("tests/fuzz/corpus/$t")
  echo "== running $t for ${SECONDS_PER_TARGET}s (new inputs: $work, crashes: $crashes)"
  if ! "$exe" "$work" "${seeds[@]}" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="$crashes/" -print_final_stats=1; then
    echo "fuzz.sh: $t found a failure; reproduce with: $exe $crashes/<file>" >&2
    status=1
  fi
done
exit $status
