// DiffusionPipeline.save_pretrained (diffusers pipelines/pipeline_utils.py) for what ModelSource opens: the
// configs as ConfigMixin.save_config writes them (sorted keys, indent 2), the weights as ModelMixin /
// PreTrainedModel.save_pretrained name them (diffusion_pytorch_model.safetensors, model.safetensors), written
// by the streaming save_safetensors and checked tensor by tensor; all in a temporary folder renamed at the end.
#include "taiyi/pipelines/pipeline_utils.h"

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "taiyi/loaders/safetensors.h"
#include "taiyi/loaders/safetensors_writer.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/utils/error.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// The components taiyi runs and their weights files as diffusers / transformers name them.
const std::vector<std::pair<std::string, std::string>> kWeights = {
    {"text_encoder", "model.safetensors"},
    {"unet", "diffusion_pytorch_model.safetensors"},
    {"vae", "diffusion_pytorch_model.safetensors"}};
const std::vector<std::string> kComponents = {"text_encoder", "tokenizer",  "unet",          "vae",
                                              "scheduler",    "tokenizer_2", "text_encoder_2"};

bool is_text_encoder(const std::string& component) { return component == "text_encoder" || component == "text_encoder_2"; }

// kWeights, plus SDXL's second text encoder.
std::vector<std::pair<std::string, std::string>> weights_of(const ModelSource& source) {
  std::vector<std::pair<std::string, std::string>> weights = kWeights;
  if (source.folder().is_sdxl()) weights.emplace_back("text_encoder_2", "model.safetensors");
  return weights;
}

std::string gigabytes(uint64_t bytes) {
  std::ostringstream s;
  s.precision(bytes < 10'000'000 ? 4 : 3);
  s << bytes / 1e9 << " GB";
  return s.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw Error(path.string() + ": write failed: " + std::strerror(errno));
}

// json.dumps(config, indent=2, sort_keys=True) + "\n", as diffusers and transformers save configs
// (nlohmann's objects are sorted by key).
void write_json(const fs::path& path, const Json& json) { write_text(path, json.dump(2) + "\n"); }

torch::Dtype output_dtype(const torch::Tensor& view, const SaveOptions& options) {
  return view.is_floating_point() && options.dtype ? *options.dtype : view.scalar_type();
}

// The source tensor as the file must hold it (a CPU tensor of the output dtype; the view itself when it
// already is one, so a `keep` conversion reads straight from the mapping).
torch::Tensor cast(const torch::Tensor& view, torch::Dtype dtype) { return view.to(dtype).contiguous(); }

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

uint64_t output_bytes(const StateDict& weights, const SaveOptions& options) {
  uint64_t total = 0;
  for (const std::string& name : weights.names()) {
    const torch::Tensor& view = *weights.find(name);
    total += static_cast<uint64_t>(view.numel()) * c10::elementSize(output_dtype(view, options));
  }
  return total;
}

// Every tensor of the written file against the source cast again: names, dtypes, shapes and bytes.
void verify_weights(const fs::path& file, const StateDict& weights, const SaveOptions& options) {
  SafetensorsFile written(file);
  if (written.tensors().size() != weights.size())
    throw Error(file.string() + ": read back " + std::to_string(written.tensors().size()) + " tensors, wrote " +
                std::to_string(weights.size()));
  for (const std::string& name : weights.names()) {
    const torch::Tensor& view = *weights.find(name);
    if (!written.find(name)) throw Error(file.string() + ": tensor " + quoted_name(name) + " missing when read back");
    const torch::Tensor back = written.tensor(name);
    if (!same_bytes(back, cast(view, output_dtype(view, options))))
      throw Error(file.string() + ": tensor " + quoted_name(name) + " read back differs from the source (" +
                  weights.origin(name) + ") cast to " + std::string(c10::toString(output_dtype(view, options))));
    release_pages(back);
    if (view.is_contiguous()) release_pages(view);
  }
}

// The component's config; a text encoder's records the dtype its weights now have, as transformers'
// save_pretrained writes the model's (config.dtype, "torch_dtype" before 4.56).
Json component_config(const ModelSource& source, const std::string& component, const SaveOptions& options) {
  Json config = source.config(component).json();
  if (!is_text_encoder(component) || !options.dtype) return config;
  const std::string name = *options.dtype == torch::kHalf ? "float16" : *options.dtype == torch::kBFloat16 ? "bfloat16" : "float32";
  if (!config.contains("dtype") && !config.contains("torch_dtype")) config["torch_dtype"] = name;
  for (const char* key : {"dtype", "torch_dtype"})
    if (config.contains(key)) config[key] = name;
  return config;
}

SavedWeights save_weights(const ModelSource& source, const std::string& component, const std::string& file_name,
                          const fs::path& folder, const SaveOptions& options) {
  const StateDict weights = weights_to_save(source, component);
  std::vector<SafetensorsEntry> entries;
  for (const std::string& name : weights.names()) {
    const torch::Tensor view = *weights.find(name);
    const torch::Dtype dtype = output_dtype(view, options);
    entries.push_back({name, safetensors_dtype(dtype, weights.origin(name) + ": tensor " + quoted_name(name)),
                       view.sizes().vec(), [view, dtype] { return cast(view, dtype); },
                       // Read once, written: the source's pages go back, so memory stays near one tensor.
                       [view] {
                         if (view.is_contiguous()) release_pages(view);
                       }});
  }
  const fs::path dir = folder / component;
  fs::create_directories(dir);
  write_json(dir / "config.json", component_config(source, component, options));
  SavedWeights saved{component, dir / file_name, weights.size(), 0};
  saved.bytes = save_safetensors(std::move(entries), saved.file);
  verify_weights(saved.file, weights, options);
  if (options.progress)
    options.progress(component + ": " + std::to_string(saved.tensors) + " tensors, " + gigabytes(saved.bytes) +
                     ", read back and verified");
  return saved;
}

void save_tokenizer(const ModelSource& source, const fs::path& folder, const std::string& component) {
  const fs::path dir = folder / component;
  fs::create_directories(dir);
  const ModelFolder& model = source.folder();
  if (model.builtin_configs()) {
    for (const auto& [name, bytes] : model.is_sdxl() ? builtin_sdxl_tokenizer_files(component)
                                                     : builtin_tokenizer_files(model.text_encoder_kind()))
      write_text(dir / name, bytes);
    return;
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(model.component_dir(component)))
    if (entry.is_regular_file()) fs::copy_file(entry.path(), dir / entry.path().filename());
}

// The source's model_index.json, with every other component (safety_checker, feature_extractor, ...) set
// to [null, null] as diffusers saves a pipeline built without them.
Json model_index(const ModelSource& source) {
  const ModelFolder& folder = source.folder();
  Json index = !folder.builtin_configs() ? read_json_file(folder.index_path())
               : folder.is_sdxl()        ? builtin_sdxl_model_index()
                                         : builtin_model_index(folder.text_encoder_kind());
  for (auto& [key, value] : index.items()) {
    const bool used = std::find(kComponents.begin(), kComponents.end(), key) != kComponents.end();
    if (!used && key.rfind('_', 0) != 0 && value.is_array()) value = Json::array({nullptr, nullptr});
  }
  return index;
}

// `out` must be new or an empty folder; its parent is made.
void check_destination(const fs::path& out) {
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw Error(out.string() + ": exists and is not a folder");
    if (!fs::is_empty(out, ec)) throw Error(out.string() + ": exists and is not empty (give a new or empty folder)");
  }
  fs::create_directories(out.has_parent_path() ? out.parent_path() : fs::path("."), ec);
  if (ec) throw Error(out.string() + ": cannot make its parent folder: " + ec.message());
}

void check_free_space(const ModelSource& source, const fs::path& out, const SaveOptions& options) {
  uint64_t needed = 64u << 20;  // configs, tokenizer and headers, with room to spare
  for (const auto& [component, file] : weights_of(source)) needed += output_bytes(weights_to_save(source, component), options);
  std::error_code ec;
  const fs::space_info space = fs::space(fs::absolute(out).parent_path(), ec);
  if (!ec && space.available < needed)
    throw Error(out.string() + ": not enough free space: the converted model needs " + gigabytes(needed) + ", " +
                gigabytes(space.available) + " available");
}

fs::path make_temporary_folder(const fs::path& out) {
  const fs::path parent = fs::absolute(out).parent_path();
  for (int attempt = 0;; ++attempt) {
    fs::path tmp = parent / ("." + out.filename().string() + ".convert-" + std::to_string(::getpid()) +
                             (attempt ? "-" + std::to_string(attempt) : ""));
    std::error_code ec;
    if (fs::create_directory(tmp, ec)) return tmp;
    if (ec || attempt > 100) throw Error(tmp.string() + ": cannot make the temporary folder: " + ec.message());
  }
}

void write_folder(const ModelSource& source, const fs::path& tmp, const SaveOptions& options,
                  std::vector<SavedWeights>& saved) {
  write_json(tmp / "model_index.json", model_index(source));
  fs::create_directories(tmp / "scheduler");
  write_json(tmp / "scheduler" / "scheduler_config.json", source.config("scheduler").json());
  save_tokenizer(source, tmp, "tokenizer");
  if (source.folder().is_sdxl()) save_tokenizer(source, tmp, "tokenizer_2");
  for (const auto& [component, file] : weights_of(source)) saved.push_back(save_weights(source, component, file, tmp, options));
}

}  // namespace

std::optional<torch::Dtype> parse_save_dtype(const std::string& name) {
  if (name == "fp16") return torch::kHalf;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "fp32") return torch::kFloat;
  if (name == "keep") return std::nullopt;
  throw Error("--dtype " + quoted_excerpt(name, 20) + ": expected fp16, bf16, fp32 or keep");
}

StateDict weights_to_save(const ModelSource& source, const std::string& component) {
  StateDict all = source.state_dict(component);
  if (!is_text_encoder(component)) return all;
  StateDict kept = StateDict::named(all.source());
  for (const std::string& name : all.names()) {
    const auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (!ends_with("embeddings.position_ids") && !ends_with("embeddings.token_type_ids"))
      kept.add(name, *all.find(name), all.origin(name));
  }
  return kept;
}

std::vector<SavedWeights> save_pretrained(const ModelSource& source, const fs::path& out, const SaveOptions& options) {
  check_destination(out);
  check_free_space(source, out, options);
  const fs::path tmp = make_temporary_folder(out);
  std::vector<SavedWeights> saved;
  try {
    write_folder(source, tmp, options, saved);
    fs::rename(tmp, out);  // over an empty folder too (rename(2))
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  for (SavedWeights& weights : saved) weights.file = out / weights.component / weights.file.filename();
  return saved;
}

}  // namespace taiyi
