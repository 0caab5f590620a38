"""Goldens for the text encoders (src/models/modeling_clip.cpp, modeling_bert.cpp): transformers' CLIPTextModel and BertModel,
loaded with from_pretrained(subfolder="text_encoder") as diffusers loads them, run in float32 on
the CPU with no attention mask (as StableDiffusionPipeline calls them). Output last_hidden_state.

ref/text_encoder.safetensors        tiny-clip, tiny-bert
ref/text_encoder_full.safetensors   full-clip, full-bert (make_fixtures.py --full only)

Tensor names: "<family>.<case>.input_ids" [2, L] and "<family>.<case>.last_hidden_state" [2, L, hidden]
for family clip / bert and the cases
    prompt   the tokenizer's ids for PROMPTS (a Chinese prompt and ""), padded to model_max_length
    random   uniform random ids over the whole vocabulary, model_max_length long
    short    random ids of length SHORT_LENGTH (the encoders must not assume the padded length)
    sharp    the prompt ids through the same config with SHARP_WEIGHTS instead of the fixture's
             (tiny only; see sharpened())
ref/text_encoder_sharp_<family>.safetensors holds those weights (the model's state dict plus a
legacy position_ids entry, which ignored_checkpoint_keys() must cover).
The ids are stored as float32 (exact: every id is below 2^24) because taiyi's safetensors reader
takes float tensors only; the tests convert them back to int64.
"""
import copy
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPTS = ["小桥流水人家, a painting in the style of 清明上河图", ""]
SHORT_LENGTH = 9
# transformers computes CLIP's causal attention from an explicit additive mask (finfo.min above the
# diagonal); taiyi uses SDPA's is_causal. Both must give the same output to this bound.
CAUSAL_MASK_TOLERANCE = 1e-6


def load(folder: Path, family: str):
    from transformers import BertModel, BertTokenizer, CLIPTextModel, CLIPTokenizer

    model_class, tokenizer_class = (CLIPTextModel, CLIPTokenizer) if family == "clip" else (BertModel, BertTokenizer)
    model = model_class.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    tokenizer = tokenizer_class.from_pretrained(folder, subfolder="tokenizer")
    return model.eval(), tokenizer


def input_cases(model, tokenizer, seed: int):
    max_length = tokenizer.model_max_length
    prompt_ids = tokenizer(PROMPTS, padding="max_length", max_length=max_length, truncation=True,
                           return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(seed)
    vocab_size = model.config.vocab_size
    return {
        "prompt": prompt_ids,
        "random": torch.randint(0, vocab_size, (2, max_length), generator=generator),
        "short": torch.randint(0, vocab_size, (2, SHORT_LENGTH), generator=generator),
    }


def sharpened(model, seed: int):
    """A copy with matrices of std 1/sqrt(fan_in) and embeddings of std 1. The fixtures' default
    init (std 0.02) keeps every activation near 0, where e.g. erf and tanh GELU agree to 1e-6;
    with these weights activations are O(1), as in the real models, and such slips show."""
    sharp = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sharp.named_parameters():
            if p.dim() == 2:
                scale = 1.0 if "embedding" in name else 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return sharp


@torch.inference_mode()
def reference_tensors(folder: Path, family: str, seed: int, sharp_weights: Path = None):
    model, tokenizer = load(folder, family)
    cases = {case: (model, ids) for case, ids in input_cases(model, tokenizer, seed).items()}
    if sharp_weights:
        sharp = sharpened(model, seed + 100)
        weights = {k: v.contiguous() for k, v in sharp.state_dict().items()}  # BERT's includes the pooler
        # The position_ids buffer that checkpoints of transformers < 4.31 carry, which the C++
        # modules must ignore (as float32 here: I64 in those files; taiyi's reader takes floats).
        legacy_key = "text_model.embeddings.position_ids" if family == "clip" else "embeddings.position_ids"
        weights[legacy_key] = torch.arange(model.config.max_position_embeddings, dtype=torch.float32)[None]
        save_file(weights, str(sharp_weights))
        cases["sharp"] = (sharp, cases["prompt"][1])
    tensors = {}
    for case, (encoder, input_ids) in cases.items():
        assert input_ids.max() < 2**24
        hidden = encoder(input_ids).last_hidden_state  # diffusers: text_encoder(ids, attention_mask=None)[0]
        tensors[f"{family}.{case}.input_ids"] = input_ids.to(torch.float32).contiguous()
        tensors[f"{family}.{case}.last_hidden_state"] = hidden.to(torch.float32).contiguous()
    return tensors


def check_causal_mask_equivalence(hidden: int, heads: int, length: int):
    """SDPA with is_causal=True (taiyi) against transformers' eager CLIP attention with the additive
    causal mask that CLIPTextTransformer builds."""
    from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask
    from transformers.models.clip.modeling_clip import eager_attention_forward

    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, heads, length, hidden // heads, generator=generator) for _ in range(3))
    mask = _create_4d_causal_attention_mask((2, length), torch.float32, device="cpu")
    module = torch.nn.Module().eval()
    expected, _ = eager_attention_forward(module, q, k, v, mask, scaling=(hidden // heads) ** -0.5)  # [B, L, h, d]
    actual = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    diff = (actual - expected).abs().max().item()
    assert diff <= CAUSAL_MASK_TOLERANCE, f"is_causal vs transformers' causal mask: max abs diff {diff}"


def make(out: Path, full: bool):
    torch.manual_seed(0)
    check_causal_mask_equivalence(hidden=768, heads=12, length=77)
    tensors = {}
    for seed, family in enumerate(("clip", "bert")):
        sharp_weights = out / "ref" / f"text_encoder_sharp_{family}.safetensors"
        tensors.update(reference_tensors(out / f"tiny-{family}", family, seed, sharp_weights))
    save_file(tensors, str(out / "ref" / "text_encoder.safetensors"))
    if full:
        tensors = {}
        for seed, family in enumerate(("clip", "bert")):
            tensors.update(reference_tensors(out / f"full-{family}", family, seed))
        save_file(tensors, str(out / "ref" / "text_encoder_full.safetensors"))
