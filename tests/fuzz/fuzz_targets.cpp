// Fuzz target bodies (tests/fuzz/fuzz_targets.h). No libtorch: only the parsers, which need none.
#include "fuzz_targets.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string_view>

#include "taiyi/jobs/prompt_file.h"
#include "taiyi/loaders/model_folder.h"
#include "taiyi/loaders/textual_inversion_layout.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/base64.h"
#include "taiyi/utils/image.h"
#include "taiyi/loaders/lora_conversion.h"
#include "taiyi/pipelines/prompt_parser.h"
#include "taiyi/loaders/safetensors_header.h"
#include "taiyi/loaders/torch_pickle.h"
#include "taiyi/loaders/torch_zip.h"
#include "taiyi/loaders/single_file_utils.h"
#include "taiyi/tokenizers/tokenizer.h"

namespace taiyi::fuzz {

namespace {

void check(bool invariant, const char* what) {
  if (!invariant) throw std::logic_error(std::string("fuzz invariant broken: ") + what);
}

std::string_view as_text(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

std::string fixtures() { return env_or("TAIYI_FIXTURES", "build/fixtures"); }

const Tokenizer& clip() {
  static std::unique_ptr<Tokenizer> tokenizer =
      load_clip_tokenizer(env_or("TAIYI_FUZZ_CLIP_TOKENIZER", fixtures() + "/tiny-clip/tokenizer"));
  return *tokenizer;
}

const Tokenizer& bert() {
  static std::unique_ptr<Tokenizer> tokenizer =
      load_bert_tokenizer(env_or("TAIYI_FUZZ_BERT_TOKENIZER", fixtures() + "/tiny-bert/tokenizer"));
  return *tokenizer;
}

void safetensors_header(const uint8_t* data, size_t size) {
  try {
    const SafetensorsHeader header = parse_safetensors_header(data, size, "fuzz.safetensors");
    uint64_t cursor = 0;
    for (const TensorInfo& t : header.tensors) {
      check(t.begin == cursor && t.end >= t.begin, "tensors contiguous");
      check(static_cast<uint64_t>(t.numel()) * element_size(t.dtype) == t.end - t.begin, "span == numel x size");
      cursor = t.end;
    }
    check(header.data_start + cursor == size, "tensors cover the data");
  } catch (const Error&) {
  }
}

void config_json(const uint8_t* data, size_t size) {
  nlohmann::json json;
  try {
    json = parse_json_text(as_text(data, size), "config.json");
  } catch (const Error&) {
    return;
  }
  // The getters every component's config goes through (the models' and the schedulers' constructors).
  try {
    const Config config(json, "config.json");
    for (const char* key : {"in_channels", "layers_per_block", "sample_size", "num_train_timesteps", "hidden_size"}) {
      try { config.get_int(key); } catch (const Error&) {}
      try { config.get_int(key, 4); } catch (const Error&) {}
    }
    for (const char* key : {"beta_start", "norm_eps", "scaling_factor"}) {
      try { config.get_double(key, 0.5); } catch (const Error&) {}
    }
    for (const char* key : {"block_out_channels", "attention_head_dim", "cross_attention_dim"}) {
      try { config.get_int_list(key); } catch (const Error&) {}
      try { config.get_int_or_list(key, 4, 8); } catch (const Error&) {}
      try { config.get_int_or_list(key, 2); } catch (const Error&) {}
    }
    for (const char* key : {"down_block_types", "_class_name"}) {
      try { config.get_string_list(key); } catch (const Error&) {}
      try { config.get_string(key, "x"); } catch (const Error&) {}
    }
    try { config.get_bool("center_input_sample", false); } catch (const Error&) {}
    try { config.unsupported("act_fn", "fuzz"); } catch (const Error&) {}
  } catch (const Error&) {
  }
  // model_index.json
  try {
    const ModelFolder folder = ModelFolder::from_index("fuzz-model", json);
    for (const char* component : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}) {
      try { folder.class_name(component); } catch (const Error&) {}
    }
    folder.text_encoder_kind();
  } catch (const Error&) {
  }
}

void tokenizer_target(const Tokenizer& tokenizer, const uint8_t* data, size_t size) {
  const std::string text(as_text(data, size));
  try {
    const Encoding encoding = tokenizer.encode(text);
    check(encoding.ids.size() == tokenizer.max_length(), "encode gives max_length ids");
    check(encoding.tokens.size() == encoding.ids.size(), "a token per id");
    check(encoding.kept_tokens <= encoding.content_tokens, "kept <= content");
    const TextTokens tokens = tokenizer.tokenize(text);
    check(tokens.ids.size() == tokens.commas.size(), "a comma flag per id");
    // (Not id < vocab_size(): a vocab.txt with repeated lines, as bert-base-chinese's, has ids past len(tokenizer),
    // as transformers does.)
    for (int64_t id : tokens.ids) check(id >= 0 && !tokenizer.token(id).empty(), "every id is a token");
    tokenizer.decode(tokens.ids);
  } catch (const Error&) {
  }
}

void clip_tokenizer(const uint8_t* data, size_t size) { tokenizer_target(clip(), data, size); }
void bert_tokenizer(const uint8_t* data, size_t size) { tokenizer_target(bert(), data, size); }

void prompt_syntax(const uint8_t* data, size_t size) {
  const std::string prompt(as_text(data, size));
  try {
    const ExtraNetworks networks = parse_extra_networks(prompt);
    for (const LoraTag& tag : networks.loras) check(std::isfinite(tag.te_multiplier) && std::isfinite(tag.unet_multiplier), "finite multipliers");
  } catch (const Error&) {
  }
  try {
    parse_prompt_attention(prompt);
  } catch (const Error&) {
  }
  try {
    const TokenizedPrompt tokenized = tokenize_prompt(clip(), prompt);
    check(!tokenized.chunks.empty(), "at least one chunk");
    for (const PromptChunk& chunk : tokenized.chunks) {
      check(chunk.ids.size() == clip().max_length() && chunk.weights.size() == chunk.ids.size(), "chunk sizes");
      for (double w : chunk.weights) check(std::isfinite(w), "finite weights");
    }
  } catch (const Error&) {
  }
}

void prompt_file(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const bool jsonl = data[0] & 1;  // the first byte chooses: a .jsonl file, or the content decides
  try {
    const PromptFile file = parse_prompt_file(as_text(data + 1, size - 1), "fuzz.txt", jsonl);
    for (const PromptJob& job : file.jobs) check(job.line >= 1, "line numbers");
  } catch (const Error&) {
  }
}

void image(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const int channels = data[0] & 1 ? 3 : 1;  // the first byte chooses: init image (RGB) or mask (L)
  try {
    const PixelImage decoded = decode_image(as_text(data + 1, size - 1), "fuzz.png", channels);
    check(decoded.width > 0 && decoded.height > 0 && decoded.width <= kMaxImageSide && decoded.height <= kMaxImageSide, "size");
    check(decoded.pixels.size() == static_cast<size_t>(decoded.width * decoded.height * channels), "pixel count");
    if (decoded.width * decoded.height <= 128 * 128) {
      const PixelImage resized = resize_lanczos(decoded, decoded.width / 2 + 3, decoded.height + 5);
      check(resized.pixels.size() == static_cast<size_t>(resized.width * resized.height * channels), "resized pixel count");
    }
  } catch (const Error&) {
  }
}

// A small SD-shaped module tree (names and shapes as lora_targets lists them for the real UNet and
// text encoders): what the file's keys are placed on.
const std::vector<LoraTarget>& lora_targets() {
  static const std::vector<LoraTarget> targets = [] {
    std::vector<LoraTarget> t;
    for (int block = 0; block < 2; ++block) {
      const std::string a = "down_blocks." + std::to_string(block) + ".attentions.0.";
      const std::string tb = a + "transformer_blocks.0.";
      t.push_back({"unet", a + "proj_in", {32, 32, 1, 1}});
      t.push_back({"unet", a + "proj_out", {32, 32}});
      for (const char* attn : {"attn1.", "attn2."}) {
        t.push_back({"unet", tb + attn + "to_q", {32, 32}});
        t.push_back({"unet", tb + attn + "to_k", {32, std::string(attn) == "attn2." ? 24 : 32}});
        t.push_back({"unet", tb + attn + "to_v", {32, std::string(attn) == "attn2." ? 24 : 32}});
        t.push_back({"unet", tb + attn + "to_out.0", {32, 32}});
      }
      t.push_back({"unet", tb + "ff.net.0.proj", {256, 32}});
      t.push_back({"unet", tb + "ff.net.2", {32, 128}});
      t.push_back({"unet", "down_blocks." + std::to_string(block) + ".resnets.0.conv1", {32, 32, 3, 3}});
      t.push_back({"unet", "down_blocks." + std::to_string(block) + ".resnets.0.time_emb_proj", {32, 128}});
    }
    // A downsampler, the mid block and two up blocks (one without attentions), so that LDM block names
    // (lora_unet_input_blocks_2_0_op, middle_block_1_proj_in, output_blocks_1_1_conv) place too.
    t.push_back({"unet", "down_blocks.0.downsamplers.0.conv", {32, 32, 3, 3}});
    for (const char* m : {"mid_block.resnets.0.conv1", "mid_block.resnets.1.conv2", "up_blocks.0.resnets.0.conv1",
                          "up_blocks.0.resnets.1.conv_shortcut", "up_blocks.0.upsamplers.0.conv",
                          "up_blocks.1.resnets.0.conv2", "up_blocks.1.resnets.1.conv1"})
      t.push_back({"unet", m, {32, 32, 3, 3}});
    for (const char* m : {"mid_block.attentions.0.proj_in", "up_blocks.1.attentions.0.proj_in", "up_blocks.1.attentions.1.proj_out"})
      t.push_back({"unet", m, {32, 32, 1, 1}});
    for (int layer = 0; layer < 2; ++layer) {
      const std::string l = "text_model.encoder.layers." + std::to_string(layer) + ".";
      for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"})
        t.push_back({"text_encoder", l + p, {24, 24}});
      t.push_back({"text_encoder", l + "mlp.fc1", {96, 24}});
      t.push_back({"text_encoder", l + "mlp.fc2", {24, 96}});
      // SDXL's second encoder as in tiny-sdxl (48 wide), so that lora_te2_ and text_encoder_2. names place.
      for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"})
        t.push_back({"text_encoder_2", l + p, {48, 48}});
      t.push_back({"text_encoder_2", l + "mlp.fc1", {53, 48}});
      t.push_back({"text_encoder_2", l + "mlp.fc2", {48, 53}});
    }
    t.push_back({"unet", "add_embedding.linear_1", {32, 88}});  // SDXL's label_emb in LDM names
    return t;
  }();
  return targets;
}

// A LoRA file as read_lora (lora_weights.cpp) reads it: the header, scalar alphas, then plan_lora.
void lora_keys(const uint8_t* data, size_t size) {
  try {
    const SafetensorsHeader header = parse_safetensors_header(data, size, "fuzz-lora.safetensors");
    std::vector<LoraTensor> tensors;
    std::map<std::string, double> alphas;
    for (const TensorInfo& info : header.tensors) {
      tensors.push_back(LoraTensor{info.name, info.shape});
      if (info.numel() == 1 && info.name.size() > 6 && info.name.compare(info.name.size() - 6, 6, ".alpha") == 0) {
        const uint8_t* at = data + header.data_start + info.begin;
        double value = 0;
        if (info.dtype == StDtype::F32) {
          float f;
          std::memcpy(&f, at, 4);
          value = f;
        } else if (info.dtype == StDtype::I64) {
          int64_t i;
          std::memcpy(&i, at, 8);
          value = static_cast<double>(i);
        } else {
          uint16_t h;
          std::memcpy(&h, at, 2);
          value = h;  // the value's bits do not matter to the placing, only that there is one
        }
        alphas[info.name] = value;
      }
    }
    const LoraPlan plan = plan_lora(tensors, alphas, header.metadata, lora_targets());
    plan.message("fuzz-lora.safetensors");
    for (const LoraPatch& patch : plan.patches) check(patch.rank > 0, "positive ranks");
  } catch (const Error&) {
  }
}

void embedding(const uint8_t* data, size_t size) {
  try {
    const SafetensorsHeader header = parse_safetensors_header(data, size, "fuzz-embedding.safetensors");
    const EmbeddingLayout layout = embedding_layout(header.tensors, "fuzz-embedding.safetensors", "stem", "");
    check(layout.vectors >= 1 && layout.vectors <= 75 && layout.dim > 0, "an embedding's shape");
  } catch (const Error&) {
  }
}

// A view of `numel` elements' storage: offset + the last element's index stays inside it.
void check_view(const TensorRecord& t) {
  check(t.shape.size() == t.stride.size(), "a stride per dimension");
  uint64_t last = t.storage_offset;
  bool empty = false;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    check(t.shape[i] >= 0 && t.stride[i] >= 0, "non-negative sizes and strides");
    if (t.shape[i] == 0) empty = true;
    else last += static_cast<uint64_t>(t.shape[i] - 1) * static_cast<uint64_t>(t.stride[i]);
  }
  check(empty ? t.storage_offset <= t.storage_numel : last < t.storage_numel, "views within their storage");
}

// A torch.save file as read_torch_checkpoint reads it: the zip, then its pickle and records.
void torch_zip(const uint8_t* data, size_t size) {
  try {
    const TorchZip zip = parse_torch_zip(data, size, "fuzz.ckpt");
    for (const ZipEntry& e : zip.entries) check(e.offset <= size && e.size <= size - e.offset, "entries within the file");
    check(zip.data_pkl != nullptr, "data.pkl found");
    const TorchStateDict sd = read_torch_state_dict(data, size, "fuzz.ckpt");
    for (const TensorRecord& t : sd.tensors) {
      check_view(t);
      check(t.data_offset <= size && t.storage_numel * element_size(t.dtype) <= size - t.data_offset, "records within the file");
    }
  } catch (const Error&) {
  }
}

void torch_pickle(const uint8_t* data, size_t size) {
  try {
    const TorchPickle pickle = parse_torch_pickle(data, size, "fuzz.pkl");
    for (const TensorRecord& t : pickle.tensors) check_view(t);
  } catch (const Error&) {
  }
}

// A checkpoint's key list as text (tools/fuzz_seeds.py writes the fixtures' lists so): the first byte chooses
// extract_ema (bit 0), layers_per_block (1 + bits 1-2) and the VAE's block count (1 + bits 3-5); then one
// key a line, "<name> <d0>,<d1>,..." (dimensions after the last space).
std::vector<CheckpointKey> checkpoint_keys(std::string_view text) {
  std::vector<CheckpointKey> keys;
  while (!text.empty()) {
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    const size_t space = line.rfind(' ');
    CheckpointKey key{std::string(line.substr(0, space)), {}};
    if (space != std::string_view::npos) {
      int64_t dim = 0;
      for (char c : line.substr(space + 1)) {
        if (c == ',') key.shape.push_back(dim), dim = 0;
        else if (c >= '0' && c <= '9' && dim < 1'000'000) dim = dim * 10 + (c - '0');
      }
      key.shape.push_back(dim);
    }
    keys.push_back(std::move(key));
  }
  return keys;
}

void check_converted(const ConvertedKeys& converted, const std::vector<CheckpointKey>& keys) {
  std::set<std::string> names, targets, read;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const CheckpointKey& key : keys) names.insert(key.name), shapes.emplace(key.name, key.shape);
  for (const KeyMapping& m : converted.mapped) {
    check(names.count(m.from) == 1, "a mapping reads a key of the file");
    check(m.row_begin < 0 || (!m.shape.empty() && !shapes[m.from].empty() && m.row_begin + m.shape[0] <= shapes[m.from][0]),
          "a row slice lies within its tensor");
    check(!m.transpose || m.shape.size() == 2, "a transposed weight is 2-D");
    check(targets.insert(m.to).second, "one mapping per name");
    check(!m.conv_to_linear || m.shape.size() == 2, "conv_to_linear gives a Linear weight");
    read.insert(m.from);
  }
  for (const std::string& name : converted.unused) check(names.count(name) && !read.count(name), "unused keys are unread keys");
}

void ldm_keys(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const std::vector<CheckpointKey> keys = checkpoint_keys(as_text(data + 1, size - 1));
  const bool extract_ema = data[0] & 1;
  const int64_t layers_per_block = 1 + ((data[0] >> 1) & 3), vae_blocks = 1 + ((data[0] >> 3) & 7);
  const ModelType type = infer_model_type(keys);
  check(!model_type_name(type).empty(), "every type has a name");
  try { check_model_type(type, "fuzz.ckpt"); } catch (const Error&) {}
  infer_text_encoder_kind(keys);
  try { check_converted(convert_ldm_unet_checkpoint(keys, "fuzz.ckpt", layers_per_block, extract_ema), keys); } catch (const Error&) {}
  try { check_converted(convert_ldm_vae_checkpoint(keys, "fuzz.ckpt", vae_blocks, vae_blocks), keys); } catch (const Error&) {}
  check_converted(convert_ldm_clip_checkpoint(keys), keys);
  try { check_converted(convert_open_clip_checkpoint(keys, "fuzz.ckpt", "conditioner.embedders.1.model.", 8), keys); } catch (const Error&) {}
  check_converted(convert_ldm_bert_checkpoint(keys), keys);
  check_converted(convert_deprecated_vae_attention_names(keys), keys);
}

// Base64 text from an HTTP request: decoding ends in bytes or an Error, never more than 3/4 of the text;
// what decodes encodes to a canonical text that decodes to the same bytes; any bytes round-trip.
void base64(const uint8_t* data, size_t size) {
  const std::string_view text = as_text(data, size);
  check(base64_decode(base64_encode(text)) == text, "decode(encode(x)) == x");
  try {
    const std::string bytes = base64_decode(text);
    check(bytes.size() * 4 <= size * 3, "decoded size <= 3/4 of the text");
    const std::string canonical = base64_encode(bytes);
    check(base64_decode(canonical) == bytes, "decode(encode(decode(x))) == decode(x)");
  } catch (const Error&) {
  }
}

}  // namespace

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"safetensors_header", safetensors_header}, {"config_json", config_json}, {"clip_tokenizer", clip_tokenizer},
      {"bert_tokenizer", bert_tokenizer},         {"prompt_syntax", prompt_syntax}, {"prompt_file", prompt_file},
      {"image", image},                           {"lora_keys", lora_keys},     {"embedding", embedding},
      {"torch_zip", torch_zip},                   {"torch_pickle", torch_pickle},
      {"ldm_keys", ldm_keys},
      {"base64", base64},
  };
  return all;
}

const Target* find_target(const std::string& name) {
  for (const Target& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

void initialize() {
  clip();
  bert();
}

}  // namespace taiyi::fuzz
