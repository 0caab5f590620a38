// `taiyi info`: inspects a model folder the way Pipeline::load would use it, without reading any
// weight data: model_index.json, each config, the modules built from them (constructors reject
// unsupported options), the safetensors headers checked by name and shape against the modules
// (check_weights, the same comparison load_weights makes), the tokenizer and the scheduler.
// Problems are collected, never thrown; see include/taiyi/cli/info.h.
#include "taiyi/cli/info.h"


#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/utils/error.h"
#include "taiyi/loaders/lora_weights.h"
#include "taiyi/loaders/single_file.h"
#include "taiyi/loaders/single_file_configs.h"
#include "taiyi/loaders/state_dict.h"
#include "taiyi/schedulers/scheduler.h"
#include "taiyi/models/text_encoder.h"
#include "taiyi/tokenizers/tokenizer.h"
#include "taiyi/models/unet_2d_condition.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/cli/options.h"

namespace taiyi {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// The config keys worth a glance per component (those present are copied into the report).
const std::map<std::string, std::vector<std::string>> kSummaryKeys = {
    {"text_encoder",
     {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
      "max_position_embeddings", "hidden_act"}},
    {"text_encoder_2",
     {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
      "max_position_embeddings", "hidden_act", "projection_dim"}},
    {"unet",
     {"sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
      "up_block_types", "cross_attention_dim", "attention_head_dim", "norm_num_groups", "transformer_layers_per_block",
      "addition_embed_type"}},
    {"vae", {"sample_size", "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
             "scaling_factor", "force_upcast"}},
    {"scheduler",
     {"_class_name", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
      "skip_prk_steps", "steps_offset", "set_alpha_to_one", "clip_sample"}},
};

// The components taiyi uses, in the order data flows through them.
const std::vector<std::string> kComponents = {"tokenizer",      "tokenizer_2", "text_encoder", "text_encoder_2",
                                              "unet",           "vae",         "scheduler"};

std::string message_of(const std::exception& e) {
  if (auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

// Runs `step`; an exception becomes a problem "<component>: <message>". Returns whether it succeeded.
template <typename Step>
bool attempt(const std::string& component, std::vector<std::string>& problems, Step&& step) {
  try {
    step();
    return true;
  } catch (const std::exception& e) {
    problems.push_back(component + ": " + message_of(e));
    return false;
  }
}

Json config_summary(const Config& config, const std::string& component) {
  Json summary = Json::object();
  for (const std::string& key : kSummaryKeys.at(component))
    if (config.json().contains(key)) summary[key] = config.json().at(key);
  return summary;
}

// The safetensors names of torch dtypes, as `taiyi info` has always listed them (F32, F16, BF16, I64, ...).
std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat: return "F32";
    case torch::kHalf: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kDouble: return "F64";
    case torch::kLong: return "I64";
    case torch::kInt: return "I32";
    case torch::kShort: return "I16";
    case torch::kChar: return "I8";
    case torch::kByte: return "U8";
    case torch::kBool: return "BOOL";
    default: return c10::toString(dtype);
  }
}

// The component's weights as the pipeline would take them (names converted for a single file; no data
// read): their files, counts, dtypes and, when the module could be built, the name-and-shape comparison
// that load_weights would make.
void inspect_weights(const ModelSource& source, const std::string& component, torch::nn::Module* module,
                     const LoadOptions& options, Json& entry, std::vector<std::string>& problems) {
  if (module) {
    int64_t model_tensors = 0, model_parameters = 0;
    for (const auto& item : module->named_parameters(/*recurse=*/true)) {
      ++model_tensors;
      model_parameters += item.value().numel();
    }
    model_tensors += static_cast<int64_t>(module->named_buffers(/*recurse=*/true).size());
    entry["model_tensors"] = model_tensors;
    entry["model_parameters"] = model_parameters;
  }
  StateDict weights;
  if (!attempt(component, problems, [&] { weights = source.state_dict(component); })) return;
  std::map<std::string, Json> files;  // by path, in name order
  std::map<std::string, int64_t> dtypes;
  int64_t parameters = 0;
  for (const std::string& name : weights.names()) {
    const torch::Tensor& view = *weights.find(name);
    ++dtypes[dtype_name(view.scalar_type())];
    parameters += view.numel();
    Json& file = files[weights.origin(name)];
    if (file.is_null()) {
      std::error_code ec;
      const uint64_t size = fs::file_size(weights.origin(name), ec);
      file = {{"path", weights.origin(name)}, {"size_bytes", ec ? 0 : size}, {"tensors", 0}, {"parameters", 0}};
    }
    file["tensors"] = file["tensors"].get<int64_t>() + 1;
    file["parameters"] = file["parameters"].get<int64_t>() + view.numel();
  }
  Json file_entries = Json::array();
  uint64_t size_bytes = 0;
  for (auto& [path, file] : files) {
    size_bytes += file["size_bytes"].get<uint64_t>();
    file_entries.push_back(file);
  }
  entry["files"] = file_entries;
  entry["tensors"] = weights.size();
  entry["parameters"] = parameters;
  entry["dtypes"] = dtypes;
  entry["size_bytes"] = size_bytes;
  entry["weight_bytes"] = weights.nbytes();
  if (!module) return;
  WeightMismatch mismatch;
  if (!attempt(component, problems, [&] { mismatch = check_weights(*module, weights, options); })) return;
  entry["missing"] = mismatch.missing;
  entry["unexpected"] = mismatch.unexpected;
  entry["mis_shaped"] = mismatch.mis_shaped;
  if (!mismatch.empty()) problems.push_back(component + ": " + mismatch.message(weights.source()));
}

void check_class(const ModelFolder& folder, const std::string& component, const std::string& expected) {
  std::string cls = folder.class_name(component);
  if (cls != expected)
    throw Error(folder.index_path().string() + ": " + component + " class '" + cls +
                "' is not supported (expected " + expected + ")");
}

// model_index.json: the pipeline class, the diffusers version, the classes of the components taiyi
// uses (into `report`) and a note for each entry it does not use.
void inspect_index(const ModelFolder& folder, Json& report, std::vector<std::string>& problems,
                   std::vector<std::string>& notes) {
  Json index;
  attempt("model_index.json", problems, [&] {
    index = !folder.builtin_configs() ? read_json_file(folder.index_path())
            : folder.is_sdxl()        ? builtin_sdxl_model_index()
                                      : builtin_model_index(folder.text_encoder_kind());
  });
  report["pipeline_class"] = index.value("_class_name", "");
  report["diffusers_version"] = index.value("_diffusers_version", "");
  // Entries of model_index.json that taiyi does not use (safety_checker, feature_extractor, ...).
  Json classes = Json::object();
  for (const auto& [name, value] : index.items()) {
    if (name.empty() || name[0] == '_') continue;
    // Components are ["library", "Class"]; other keys (requires_safety_checker) are options.
    if (!value.is_array() || value.size() != 2 || !value[1].is_string()) continue;
    bool used = std::find(kComponents.begin(), kComponents.end(), name) != kComponents.end();
    if (!used) {
      notes.push_back(name + " (" + value[1].get<std::string>() + "): not used by taiyi");
      continue;
    }
    classes[name] = {{"library", value[0]}, {"class", value[1]}};
  }
  report["classes"] = classes;
}

// Tokenizer (or SDXL's tokenizer_2): its kind, length and vocabulary come from the tokenizer files.
Json inspect_tokenizer(const ModelFolder& folder, const std::string& component, std::vector<std::string>& problems) {
  Json entry = Json::object();
  attempt(component, problems, [&] {
    entry["class"] = folder.class_name(component);
    std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(folder, component);
    entry["kind"] = tokenizer->kind();
    entry["max_length"] = tokenizer->max_length();
    entry["vocab_size"] = tokenizer->vocab_size();
  });
  return entry;
}

// Text encoder, UNet, VAE: config, module, weights (as Pipeline::load checks and loads them);
// here the text encoder's.
Json inspect_text_encoder(const ModelSource& source, const std::string& component, std::vector<std::string>& problems) {
  const ModelFolder& folder = source.folder();
  Json entry = Json::object();
  std::shared_ptr<TextEncoderImpl> module;
  LoadOptions options;
  attempt(component, problems, [&] {
    entry["class"] = folder.class_name(component);
    const Config config = source.config(component);
    entry["config"] = config_summary(config, component);
    module = component == "text_encoder_2" ? make_text_encoder_2(folder, config) : make_text_encoder(folder);
    options.ignore_unexpected = module->ignored_checkpoint_keys();
  });
  inspect_weights(source, component, module.get(), options, entry, problems);
  return entry;
}

// The UNet's class, config summary and weights.
Json inspect_unet(const ModelSource& source, std::vector<std::string>& problems) {
  const ModelFolder& folder = source.folder();
  Json entry = Json::object();
  std::unique_ptr<UNet2DConditionModel> module;
  attempt("unet", problems, [&] {
    entry["class"] = folder.class_name("unet");
    check_class(folder, "unet", "UNet2DConditionModel");
    Config config = source.config("unet");
    entry["config"] = config_summary(config, "unet");
    module = std::make_unique<UNet2DConditionModel>(config);
  });
  inspect_weights(source, "unet", module ? &module->module() : nullptr, {}, entry, problems);
  return entry;
}

// The VAE's class, config summary, scale factors and weights.
Json inspect_vae(const ModelSource& source, std::vector<std::string>& problems) {
  const ModelFolder& folder = source.folder();
  Json entry = Json::object();
  std::unique_ptr<AutoencoderKL> module;
  attempt("vae", problems, [&] {
    entry["class"] = folder.class_name("vae");
    check_class(folder, "vae", "AutoencoderKL");
    Config config = source.config("vae");
    entry["config"] = config_summary(config, "vae");
    module = std::make_unique<AutoencoderKL>(config);
    entry["scale_factor"] = module->scale_factor();
    entry["scaling_factor"] = module->scaling_factor();
  });
  inspect_weights(source, "vae", module ? &module->module() : nullptr, {}, entry, problems);
  return entry;
}

// Scheduler: the folder's class, as taiyi builds it by default.
Json inspect_scheduler(const ModelSource& source, std::vector<std::string>& problems) {
  Json entry = Json::object();
  attempt("scheduler", problems, [&] {
    entry["class"] = source.folder().class_name("scheduler");
    Config config = source.config("scheduler");
    entry["config"] = config_summary(config, "scheduler");
    entry["name"] = make_scheduler(config, "")->name();
  });
  return entry;
}

}  // namespace

Json inspect_model(const fs::path& root, const ModelSourceOptions& options) {
  Json report = {{"folder", root.string()}, {"usable", false}};
  std::vector<std::string> problems, notes;
  auto finish = [&]() {
    report["problems"] = problems;
    report["notes"] = notes;
    report["usable"] = problems.empty();
    return report;
  };

  ModelSource source;
  const std::string opening = fs::is_directory(root) ? "model_index.json" : "checkpoint";
  if (!attempt(opening, problems, [&] { source = ModelSource::open(root, options); })) return finish();
  report["layout"] = source.description();
  report["single_file"] = source.single_file();
  if (source.single_file()) report["ema"] = source.has_ema();
  if (!source.vae_path().empty()) report["vae"] = source.vae_path().string();
  inspect_index(source.folder(), report, problems, notes);

  // The components in the order data flows through them.
  Json components = Json::object();
  const bool sdxl = source.folder().is_sdxl();
  report["family"] = sdxl ? "SDXL" : "SD 1.x";
  components["tokenizer"] = inspect_tokenizer(source.folder(), "tokenizer", problems);
  if (sdxl) components["tokenizer_2"] = inspect_tokenizer(source.folder(), "tokenizer_2", problems);
  components["text_encoder"] = inspect_text_encoder(source, "text_encoder", problems);
  if (sdxl) components["text_encoder_2"] = inspect_text_encoder(source, "text_encoder_2", problems);
  components["unet"] = inspect_unet(source, problems);
  components["vae"] = inspect_vae(source, problems);
  components["scheduler"] = inspect_scheduler(source, problems);
  report["components"] = components;
  // A component whose keys do not convert (named above as its problem) leaves the list out.
  if (source.single_file()) attempt("checkpoint", problems, [&] { report["ignored_keys"] = source.unused_keys(); });
  return finish();
}

namespace {

// 1234567 -> "1,234,567".
std::string grouped(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

std::string human_size(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / double(1ull << 30));
  else if (bytes >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MB", bytes / double(1ull << 20));
  else if (bytes >= 1024) std::snprintf(buf, sizeof buf, "%.1f KB", bytes / 1024.0);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  return buf;
}

// A JSON value as it reads in a config line: strings bare, lists [a, b], numbers as JSON writes them.
std::string plain(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < value.size(); ++i) s += (i ? ", " : "") + plain(value[i]);
    return s + "]";
  }
  return value.dump();
}

}  // namespace

std::string format_model_report(const Json& report) {
  std::ostringstream out;
  const auto& problems = report.value("problems", Json::array());
  out << "model:        " << report.value("folder", "") << "\n";
  if (!report.value("layout", "").empty()) out << "layout:       " << report.value("layout", "") << "\n";
  if (report.contains("vae")) out << "vae:          " << report.value("vae", "") << "\n";
  if (!report.value("pipeline_class", "").empty())
    out << "pipeline:     " << report.value("pipeline_class", "") << " (diffusers "
        << report.value("diffusers_version", "?") << "), " << report.value("family", "SD 1.x") << "\n";
  out << "usable:       "
      << (report.value("usable", false) ? "yes" : "NO (" + std::to_string(problems.size()) + " problem(s), below)")
      << "\n";

  const Json components = report.value("components", Json::object());
  for (const std::string& name : kComponents) {
    if (!components.contains(name)) continue;
    const Json& c = components.at(name);
    out << "\n" << name << ": " << c.value("class", "?");
    if ((name == "tokenizer" || name == "tokenizer_2") && c.contains("kind")) {
      if (c.at("kind") != c.value("class", "")) out << " (taiyi: " << c.at("kind").get<std::string>() << ")";
      out << ", max length " << c.at("max_length").get<int64_t>() << ", " << grouped(c.at("vocab_size").get<int64_t>())
          << " tokens";
    }
    if (name == "scheduler" && c.contains("name")) out << " (taiyi: " << c.at("name").get<std::string>() << ")";
    out << "\n";
    if (c.contains("config") && !c.at("config").empty()) {
      out << "  config:";
      const Json& config = c.at("config");
      for (const std::string& key : kSummaryKeys.at(name))  // in reading order, not alphabetical
        if (config.contains(key) && key[0] != '_') out << " " << key << "=" << plain(config.at(key));
      out << "\n";
    }
    if (c.contains("tensors")) {
      out << "  weights: " << c.at("files").size() << " file(s), " << human_size(c.at("size_bytes").get<uint64_t>())
          << ", " << grouped(c.at("tensors").get<int64_t>()) << " tensors, "
          << grouped(c.at("parameters").get<int64_t>()) << " parameters;";
      for (const auto& [dtype, count] : c.at("dtypes").items()) out << " " << dtype << " x" << count.get<int64_t>();
      out << "\n";
      for (const Json& f : c.at("files"))
        out << "    " << fs::path(f.at("path").get<std::string>()).filename().string() << "  "
            << human_size(f.at("size_bytes").get<uint64_t>()) << ", " << f.at("tensors").get<int64_t>() << " tensors\n";
    }
    if (c.contains("model_tensors")) {
      out << "  model:   " << grouped(c.at("model_tensors").get<int64_t>()) << " tensors, "
          << grouped(c.at("model_parameters").get<int64_t>()) << " parameters";
      if (c.contains("missing")) {
        bool matches = c.at("missing").empty() && c.at("unexpected").empty() && c.at("mis_shaped").empty();
        out << (matches ? "; weights match" : "; weights do NOT match (see problems)");
      }
      out << "\n";
    }
  }
  const auto& ignored = report.value("ignored_keys", Json::array());
  if (!ignored.empty()) {
    out << "\nkeys of the file not used: " << ignored.size() << " (";
    for (size_t i = 0; i < std::min<size_t>(ignored.size(), 5); ++i) out << (i ? ", " : "") << ignored[i].get<std::string>();
    out << (ignored.size() > 5 ? ", ...)\n" : ")\n");
  }
  const auto& notes = report.value("notes", Json::array());
  if (!notes.empty()) {
    out << "\nnotes:\n";
    for (const Json& n : notes) out << "  - " << n.get<std::string>() << "\n";
  }
  if (!problems.empty()) {
    out << "\nproblems:\n";
    for (const Json& p : problems) out << "  - " << p.get<std::string>() << "\n";
  }
  return out.str();
}

}  // namespace taiyi

namespace taiyi {

Json inspect_lora(const fs::path& root, const fs::path& lora_path) {
  const ModelSource source = ModelSource::open(root, {});
  auto text_encoder = make_text_encoder(source.folder());
  UNet2DConditionModel unet(source.config("unet"));
  std::vector<LoraTarget> targets = lora_targets("text_encoder", *text_encoder);
  if (source.folder().is_sdxl()) {
    auto text_encoder_2 = make_text_encoder_2(source.folder(), source.config("text_encoder_2"));
    for (LoraTarget& t : lora_targets("text_encoder_2", *text_encoder_2)) targets.push_back(std::move(t));
  }
  for (LoraTarget& t : lora_targets("unet", unet.module())) targets.push_back(std::move(t));
  LoraFile lora = read_lora(lora_path, targets, /*strict=*/false);
  Json report = {{"file", lora_path.string()}, {"model", root.string()}, {"layout", to_string(lora.plan.layout)},
                 {"hash", lora_short_hash(lora_path)}, {"tensors", lora.file->tensors().size()}};
  Json modules = Json::array();
  std::map<std::string, int64_t> per_component;
  for (const LoraPatch& p : lora.plan.patches) {
    std::string kind = p.weight_shape.size() == 2 ? "linear"
                       : "conv " + std::to_string(p.weight_shape[2]) + "x" + std::to_string(p.weight_shape[3]);
    modules.push_back({{"component", p.component}, {"module", p.module}, {"kind", kind}, {"rank", p.rank},
                       {"alpha", p.alpha}, {"shape", p.weight_shape}});
    ++per_component[p.component];
  }
  report["modules"] = modules;
  report["per_component"] = per_component;
  report["unplaced"] = lora.plan.unplaced;
  report["mis_shaped"] = lora.plan.mis_shaped;
  Json metadata = Json::object();
  for (const auto& [key, value] : lora.file->metadata())
    if (key.rfind("ss_", 0) == 0 && value.size() < 200) metadata[key] = value;
  report["metadata"] = metadata;
  report["usable"] = lora.plan.ok() && !lora.plan.patches.empty();
  return report;
}

std::string format_lora_report(const Json& report) {
  std::ostringstream out;
  out << "LoRA file: " << report.value("file", "") << "\n";
  out << "model:     " << report.value("model", "") << "\n";
  out << "layout:    " << report.value("layout", "") << ", " << report.value("tensors", 0) << " tensors, hash "
      << report.value("hash", "") << "\n";
  const Json& modules = report["modules"];
  out << "patches:   " << modules.size() << " module(s)";
  for (const auto& [component, count] : report["per_component"].items()) out << ", " << component << " " << count.get<int64_t>();
  out << "\n";
  for (const Json& m : modules) {
    char alpha[32];
    std::snprintf(alpha, sizeof alpha, "%g", m["alpha"].get<double>());
    out << "  " << m["component"].get<std::string>() << " " << m["module"].get<std::string>() << "  ("
        << m["kind"].get<std::string>() << ", rank " << m["rank"].get<int64_t>() << ", alpha " << alpha << ")\n";
  }
  for (const char* kind : {"unplaced", "mis_shaped"}) {
    const Json& list = report[kind];
    if (list.empty()) continue;
    out << (std::string(kind) == "unplaced" ? "keys that name no module of this model: "
                                            : "mis-shaped: ")
        << list.size() << "\n";
    for (const Json& k : list) out << "  " << k.get<std::string>() << "\n";
  }
  out << "usable:    " << (report.value("usable", false) ? "yes" : "NO") << "\n";
  return out.str();
}

namespace cli {

CLI::App* add_info_command(CLI::App& app, InfoCommand& command) {
  command.model = default_model();
  CLI::App* info = app.add_subcommand("info", "what taiyi sees in a model (folder or single file), and every problem found");
  add_model_option(info, command.model);
  add_model_source_options(info, command.source);
  info->add_option("--lora", command.lora, "list what this LoRA file would patch in the model, and every key it cannot place");
  info->add_flag("--json", command.json, "JSON output");
  return info;
}

int run_info(const InfoCommand& command) {
  const Json report = command.lora.empty() ? inspect_model(command.model, command.source) : inspect_lora(command.model, command.lora);
  if (command.json) std::cout << report.dump(2) << "\n";
  else std::cout << (command.lora.empty() ? format_model_report(report) : format_lora_report(report));
  return report.value("usable", false) ? 0 : 1;
}

}  // namespace cli

}  // namespace taiyi
