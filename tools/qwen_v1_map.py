"""The Qwen v1 -> transformers Qwen2 parameter mapping, shared by the tools that run Qwen v1 weights
through `Qwen2ForCausalLM` (gen_model_fixtures.py, compare_torch.py):
  q/k/v_proj (+ bias) = rows 0..P, P..2P, 2P..3P of attn.c_attn, o_proj = attn.c_proj,
  gate_proj = mlp.w2, up_proj = mlp.w1, down_proj = mlp.c_proj, input_layernorm = ln_1,
  post_attention_layernorm = ln_2, norm = ln_f, embed_tokens = wte, lm_head = lm_head.
"""
import re

LAYER_MAP = {"attn.c_proj.weight": "self_attn.o_proj.weight", "mlp.w2.weight": "mlp.gate_proj.weight",
             "mlp.w1.weight": "mlp.up_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight",
             "ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight"}
TOP_MAP = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}


def v1_to_qwen2(name, t, P):
    """[(Qwen2 parameter name, tensor)] for one Qwen v1 tensor (P = heads * head_dim)."""
    if name in TOP_MAP:
        return [(TOP_MAP[name], t)]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if not m:
        raise KeyError(f"unexpected tensor {name}")
    q, rest = f"model.layers.{m[1]}.", m[2]
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        return [(q + f"self_attn.{n}.{kind}", t[j * P:(j + 1) * P])
                for j, n in enumerate(("q_proj", "k_proj", "v_proj"))]
    return [(q + LAYER_MAP[rest], t)]
