// The part of transformers' slow tokenizers that CLIPTokenizer and BertTokenizer share, ported from
// tokenization_utils.py and tokenization_utils_base.py (transformers 4.57): the added tokens (Trie,
// PreTrainedTokenizer.tokenize's split around them), what from_pretrained and __init__ make of
// tokenizer_config.json, special_tokens_map.json and added_tokens.json, and the encode that diffusers'
// pipeline asks for: tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True).
// Plain C++: no torch here.
#include "tokenizers/tokenization_utils.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "taiyi/utils/error.h"
#include "taiyi/utils/json.h"
#include "tokenizers/unicode.h"

namespace taiyi::tokenizers {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// =============================================================================================
// Added tokens (PreTrainedTokenizer: special tokens written literally in the text)
// =============================================================================================

void Trie::add(const std::u32string& word) {
  if (word.empty()) return;
  int node = 0;
  for (char32_t c : word) {
    auto it = nodes_[node].children.find(c);
    if (it == nodes_[node].children.end()) {
      nodes_.emplace_back();
      it = nodes_[node].children.emplace(c, static_cast<int>(nodes_.size() - 1)).first;
    }
    node = it->second;
  }
  nodes_[node].terminal = true;
}

std::vector<std::u32string> Trie::split(const std::u32string& text) const {
  std::vector<State> states;  // partial matches: (start, node), in start order
  std::vector<size_t> offsets = {0};
  size_t skip = 0;
  const size_t n = text.size();
  for (size_t current = 0; current < n; ++current) {
    char32_t current_char = text[current];
    if (skip && current < skip) continue;
    std::vector<size_t> to_remove;
    bool reset = false;
    for (auto& state : states) {
      size_t start = state.first;
      if (nodes_[state.second].terminal) {
        auto [match_start, match_end] = longest_match(text, states, start, current, skip);
        offsets.push_back(match_start);
        offsets.push_back(match_end);
        reset = true;
        break;
      }
      int next = child(state.second, current_char);
      if (next >= 0) state.second = next;
      else to_remove.push_back(start);
    }
    if (reset) {
      states.clear();
    } else {
      states.erase(std::remove_if(states.begin(), states.end(),
                                  [&](const auto& s) {
                                    return std::find(to_remove.begin(), to_remove.end(), s.first) !=
                                           to_remove.end();
                                  }),
                   states.end());
    }
    if (current >= skip) {
      int next = child(0, current_char);
      if (next >= 0) states.emplace_back(current, next);
    }
  }
  for (const auto& state : states) {
    if (nodes_[state.second].terminal) {
      offsets.push_back(state.first);
      offsets.push_back(n);
      break;
    }
  }
  return cut_text(text, offsets);
}

// The state starting at `start` is a full match: the lookahead for the longest match among the states
// that start at or before it (extra_id_100 over extra_id_1; "[CLS]" even when "L" is a token too).
// Returns the match's (start, end); `skip` moves to the end of each match the lookahead finds.
std::pair<size_t, size_t> Trie::longest_match(const std::u32string& text, const std::vector<State>& states,
                                              size_t start, size_t current, size_t& skip) const {
  const size_t n = text.size();
  size_t end = 0;
  for (const auto& look : states) {
    size_t lookstart = look.first;
    int looknode = look.second;
    size_t lookahead_index;
    if (lookstart > start) break;
    if (lookstart < start) {
      lookahead_index = current + 1;
      end = current + 1;
    } else {
      lookahead_index = current;
      end = current;
    }
    if (nodes_[looknode].terminal) {
      start = lookstart;
      end = lookahead_index;
      skip = lookahead_index;
    }
    while (lookahead_index < n) {
      int next = child(looknode, text[lookahead_index]);
      if (next < 0) break;
      looknode = next;
      ++lookahead_index;
      if (nodes_[looknode].terminal) {
        start = lookstart;
        end = lookahead_index;
        skip = lookahead_index;
      }
    }
  }
  return {start, end};
}

// The text cut at the offsets (and at its end), empty pieces dropped.
std::vector<std::u32string> Trie::cut_text(const std::u32string& text, std::vector<size_t> offsets) {
  offsets.push_back(text.size());
  std::vector<std::u32string> pieces;
  size_t start = 0;
  for (size_t end : offsets) {
    if (start >= end) continue;
    pieces.push_back(text.substr(start, end - start));
    start = end;
  }
  return pieces;
}

std::optional<int64_t> AddedVocabulary::find_utf8(const std::string& content) const {
  auto it = encoder_utf8.find(content);
  if (it == encoder_utf8.end()) return std::nullopt;
  return it->second;
}

std::optional<int64_t> AddedVocabulary::find(const std::u32string& content) const {
  auto it = encoder.find(content);
  if (it == encoder.end()) return std::nullopt;
  return it->second;
}

std::vector<Piece> AddedVocabulary::split(std::u32string text, bool lower_case_outside_specials) const {
  if (lower_case_outside_specials) text = lower_outside_specials(text);
  std::vector<std::u32string> tokens = trie.split(text);
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::u32string token = tokens[i];
    auto id = find(token);
    if (!id) continue;
    auto extended = decoder.find(*id);
    if (extended == decoder.end()) continue;
    const AddedToken& added = extended->second;
    std::optional<std::u32string> left, right;
    if (i > 0) left = tokens[i - 1];
    if (i + 1 < tokens.size()) right = tokens[i + 1];
    if (added.rstrip && right && !right->empty()) tokens[i + 1] = python_lstrip(*right);
    if (added.lstrip && left && !left->empty()) tokens[i - 1] = python_rstrip(*left);
    if (added.single_word && left && !left->empty() && left->back() != U' ') {
      tokens[i - 1] += token;
      tokens[i].clear();
    } else if (added.single_word && right && !right->empty() && right->front() != U' ') {
      tokens[i + 1] = token + tokens[i + 1];
      tokens[i].clear();
    }
  }
  std::vector<Piece> pieces;
  for (std::u32string& token : tokens) {
    if (token.empty()) continue;
    auto id = find(token);
    pieces.push_back(Piece{std::move(token), id});
  }
  return pieces;
}

// re.sub(r"(special|...)|(.+?)", lambda m: m.groups()[0] or m.groups()[1].lower(), text): the
// special tokens and the non-special normalized added tokens stay, every other character is
// lowered alone ('.' does not match a newline, which stays as it is).
std::u32string AddedVocabulary::lower_outside_specials(const std::u32string& text) const {
  std::vector<const std::u32string*> kept;
  for (const auto& s : all_special_tokens) kept.push_back(&s);
  for (const auto& [id, token] : decoder)
    if (!token.special && token.normalized) kept.push_back(&token.content);
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const std::u32string* match = nullptr;
    for (const std::u32string* s : kept) {
      if (!s->empty() && text.compare(i, s->size(), *s) == 0) {
        match = s;
        break;
      }
    }
    if (match) {
      out += *match;
      i += match->size();
    } else {
      if (text[i] == U'\n') out += text[i];
      else out += python_lower(text.substr(i, 1));
      ++i;
    }
  }
  return out;
}

// =============================================================================================
// Loading: tokenizer_config.json, special_tokens_map.json, added_tokens.json
// =============================================================================================

namespace {

const char* const kSpecialAttributes[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                          "pad_token", "cls_token", "mask_token"};

AddedToken parse_added_token(const Json& value, const fs::path& file, const std::string& key) {
  AddedToken token;
  if (value.is_string()) {
    token.content = decode_utf8(value.get<std::string>());
    return token;
  }
  if (!value.is_object() || !value.contains("content") || !value["content"].is_string())
    throw Error(file.string() + ": '" + key + "' = " + json_excerpt(value) +
                ": expected a token string or an object with a \"content\" string");
  auto flag = [&](const char* name, bool fallback) {
    if (!value.contains(name) || value[name].is_null()) return fallback;
    if (!value[name].is_boolean())
      throw Error(file.string() + ": '" + key + "." + name + "' = " + json_excerpt(value[name]) + ": expected true or false");
    return value[name].get<bool>();
  };
  token.content = decode_utf8(value["content"].get<std::string>());
  token.single_word = flag("single_word", false);
  token.lstrip = flag("lstrip", false);
  token.rstrip = flag("rstrip", false);
  token.special = flag("special", false);
  token.normalized = flag("normalized", !token.special);  // tokenizers.AddedToken's default
  return token;
}

// A special-token attribute value as from_pretrained hands it to the constructor: a plain string
// or an AddedToken (which _add_tokens always re-registers, with its flags).
struct SpecialValue {
  AddedToken token;
  bool is_added_token = false;
};

// What the files say about the added tokens and the special-token attributes, before the
// constructor's defaults.
struct SpecialTokenFiles {
  std::map<int64_t, AddedToken> added_decoder;
  std::map<std::u32string, AddedToken> added_by_content;
  std::map<std::string, std::optional<SpecialValue>> values;  // attribute -> value (nullopt: None)
  std::vector<SpecialValue> additional;
  bool have_additional = false;
};

std::optional<SpecialValue> parse_special_value(const Json& value, const fs::path& file, const std::string& key,
                                                bool force_special) {
  if (value.is_null()) return std::nullopt;
  SpecialValue v;
  v.token = parse_added_token(value, file, key);
  v.is_added_token = value.is_object();
  if (v.is_added_token && force_special) {
    v.token.special = true;
    if (!value.contains("normalized")) v.token.normalized = false;
  }
  return v;
}

std::vector<SpecialValue> parse_special_list(const Json& list, const fs::path& file, const std::string& key,
                                             bool force_special) {
  if (!list.is_array())
    throw Error(file.string() + ": '" + key + "' = " + json_excerpt(list) + ": expected a list of tokens");
  std::vector<SpecialValue> out;
  for (const Json& item : list)
    if (auto v = parse_special_value(item, file, key, force_special)) out.push_back(*v);
  return out;
}

// model_max_length, truncation_side and padding_side of tokenizer_config.json.
void read_length_and_sides(const Json& init, size_t default_max_length, TokenizerSettings& settings) {
  const Config& config = settings.config;
  if (config.has("model_max_length")) {
    const Json& value = init["model_max_length"];
    if (!value.is_number_integer() || value.get<int64_t>() < 2 || value.get<int64_t>() > 1000000)
      config.unsupported("model_max_length", "an integer between 2 and 1000000 (the text encoder's positions)");
    settings.max_length = static_cast<size_t>(value.get<int64_t>());
  } else {
    // transformers would use VERY_LARGE_INTEGER, with which the pipeline cannot run: take the
    // text encoder's usual length instead.
    settings.max_length = default_max_length;
  }
  for (const char* key : {"truncation_side", "padding_side"}) {
    std::string side = config.get_string(key, "right");
    if (side != "right" && side != "left") config.unsupported(key, "\"right\" or \"left\"");
    (std::string(key) == "truncation_side" ? settings.truncate_left : settings.pad_left) = side == "left";
  }
}

// The special-token attributes and additional_special_tokens of tokenizer_config.json.
void read_config_specials(const Json& init, const fs::path& config_path, SpecialTokenFiles& files) {
  for (const char* attr : kSpecialAttributes) {
    if (init.contains(attr)) files.values[attr] = parse_special_value(init[attr], config_path, attr, false);
  }
  if (init.contains("additional_special_tokens") && !init["additional_special_tokens"].is_null()) {
    files.additional =
        parse_special_list(init["additional_special_tokens"], config_path, "additional_special_tokens", false);
    files.have_additional = true;
  }
}

// added_tokens_decoder of tokenizer_config.json (tokenizers saved by transformers >= 4.34).
void read_added_tokens_decoder(const Json& init, const fs::path& config_path, SpecialTokenFiles& files) {
  const Json& entries = init["added_tokens_decoder"];
  if (!entries.is_object())
    throw Error(config_path.string() + ": 'added_tokens_decoder' must map token ids to token objects");
  for (const auto& item : entries.items()) {
    int64_t id;
    try {
      size_t used = 0;
      id = std::stoll(item.key(), &used);
      if (used != item.key().size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      throw Error(config_path.string() + ": added_tokens_decoder key " + quoted_name(item.key()) + " is not a token id");
    }
    if (!item.value().is_object())
      throw Error(config_path.string() + ": added_tokens_decoder[" + quoted_name(item.key()) + "] must be a token object");
    AddedToken token = parse_added_token(item.value(), config_path, "added_tokens_decoder." + item.key());
    files.added_decoder[id] = token;
    files.added_by_content[token.content] = token;
  }
}

// special_tokens_map.json (older tokenizers): its attributes override tokenizer_config.json's.
void read_special_tokens_map(const TokenizerFiles& in, SpecialTokenFiles& files) {
  const fs::path map_path = in.dir / "special_tokens_map.json";
  if (const Json* map = in.special_tokens_map.is_null() ? nullptr : &in.special_tokens_map) {
    if (!map->is_object()) throw Error(map_path.string() + ": expected a JSON object");
    for (const auto& item : map->items()) {
      if (item.key() == "additional_special_tokens") {
        // Appended to the tokenizer_config.json list, without duplicates.
        std::vector<SpecialValue> merged = files.additional;
        for (const SpecialValue& v : parse_special_list(item.value(), map_path, item.key(), true)) {
          bool seen = std::any_of(merged.begin(), merged.end(), [&](const SpecialValue& m) {
            return m.token.content == v.token.content && m.is_added_token == v.is_added_token;
          });
          if (!seen) merged.push_back(v);
        }
        files.additional = merged;
        files.have_additional = true;
      } else if (std::find(std::begin(kSpecialAttributes), std::end(kSpecialAttributes), item.key()) !=
                 std::end(kSpecialAttributes)) {
        files.values[item.key()] = parse_special_value(item.value(), map_path, item.key(), true);
      }
    }
  }
}

// added_tokens.json (older tokenizers): token -> id; special when a special-token attribute names it.
void read_added_tokens_json(const TokenizerFiles& in, SpecialTokenFiles& files) {
  const fs::path added_path = in.dir / "added_tokens.json";
  if (const Json* added_json = in.added_tokens.is_null() ? nullptr : &in.added_tokens) {
    if (!added_json->is_object()) throw Error(added_path.string() + ": expected a JSON object of token -> id");
    std::vector<std::u32string> specials;
    for (const auto& [attr, value] : files.values)
      if (value) specials.push_back(value->token.content);
    for (const SpecialValue& v : files.additional) specials.push_back(v.token.content);
    for (const auto& item : added_json->items()) {
      if (!item.value().is_number_integer())
        throw Error(added_path.string() + ": " + quoted_name(item.key()) + " = " + json_excerpt(item.value()) +
                    ": expected a token id");
      AddedToken token;
      token.content = decode_utf8(item.key());
      token.special = std::find(specials.begin(), specials.end(), token.content) != specials.end();
      token.normalized = !token.special;
      files.added_decoder[item.value().get<int64_t>()] = token;
      files.added_by_content[token.content] = token;
    }
  }
}

// The special-token attributes as the constructor ends up with them.
void apply_constructor(SpecialTokenFiles& files, const std::map<std::string, std::string>& defaults,
                       const std::vector<std::string>& wrap_as_added_token) {
  // Special-token attributes given as strings take the flags of the added token of that content.
  for (auto& [attr, value] : files.values) {
    if (!value || files.added_by_content.empty()) continue;
    auto it = files.added_by_content.find(value->token.content);
    if (it != files.added_by_content.end()) value = SpecialValue{it->second, true};
  }
  // Constructor defaults for the attributes the files do not set.
  for (const auto& [attr, content] : defaults) {
    if (!files.values.count(attr)) files.values[attr] = SpecialValue{AddedToken{decode_utf8(content)}, false};
  }
  for (const std::string& attr : wrap_as_added_token) {
    auto it = files.values.find(attr);
    if (it != files.values.end() && it->second && !it->second->is_added_token) {
      it->second->token = AddedToken{it->second->token.content};  // lstrip = rstrip = False
      it->second->is_added_token = true;
    }
  }
}

// The attributes in SPECIAL_TOKENS_ATTRIBUTES order, then extra_special_tokens.
std::vector<std::pair<std::string, SpecialValue>> ordered_special_tokens(const Json& init, const fs::path& config_path,
                                                                         const SpecialTokenFiles& files) {
  std::vector<std::pair<std::string, SpecialValue>> ordered;
  for (const char* attr : kSpecialAttributes) {
    auto it = files.values.find(attr);
    if (it != files.values.end() && it->second && !it->second->token.content.empty())
      ordered.emplace_back(attr, *it->second);
  }
  if (files.have_additional)
    for (const SpecialValue& v : files.additional) ordered.emplace_back("additional_special_tokens", v);
  if (init.contains("extra_special_tokens") && !init["extra_special_tokens"].is_null()) {
    const Json& extra = init["extra_special_tokens"];
    if (!extra.is_object()) throw Error(config_path.string() + ": 'extra_special_tokens' must be an object");
    for (const auto& item : extra.items())
      if (auto v = parse_special_value(item.value(), config_path, "extra_special_tokens." + item.key(), false))
        ordered.emplace_back(item.key(), *v);
  }
  return ordered;
}

// special_by_attribute and all_special_tokens; returns all_special_tokens_extended: unique by
// content, first attribute wins.
std::vector<SpecialValue> record_special_tokens(AddedVocabulary& added,
                                                const std::vector<std::pair<std::string, SpecialValue>>& ordered) {
  std::vector<SpecialValue> extended;
  for (const auto& [attr, value] : ordered) {
    if (attr != "additional_special_tokens" && !added.special_by_attribute.count(attr))
      added.special_by_attribute[attr] = value.token.content;
    bool seen = std::find(added.all_special_tokens.begin(), added.all_special_tokens.end(), value.token.content) !=
                added.all_special_tokens.end();
    if (seen) continue;
    added.all_special_tokens.push_back(value.token.content);
    extended.push_back(value);
  }
  return extended;
}

// _add_tokens(special_tokens=True) for those not yet in the added encoder (an AddedToken never
// compares equal to a string key, so AddedTokens are always re-registered).
void add_special_tokens(AddedVocabulary& added, const std::vector<SpecialValue>& extended,
                        const std::function<std::optional<int64_t>(const std::string&)>& vocab_id,
                        const std::function<size_t()>& vocab_keys) {
  size_t new_index = vocab_keys();
  for (const auto& [content, id] : added.encoder) {
    if (!vocab_id(encode_utf8(content))) ++new_index;  // get_vocab() also counts the added tokens
  }
  size_t appended = 0;
  std::unordered_map<std::u32string, int64_t> appended_ids;
  for (SpecialValue value : extended) {
    if (!value.is_added_token && added.encoder.count(value.token.content)) continue;
    AddedToken token = value.token;
    if (!value.is_added_token) token.normalized = false;
    token.special = true;
    int64_t index;
    if (auto it = added.encoder.find(token.content); it != added.encoder.end()) {
      index = it->second;
    } else if (auto id = vocab_id(encode_utf8(token.content))) {
      index = *id;
    } else if (auto a = appended_ids.find(token.content); a != appended_ids.end()) {
      index = a->second;
    } else {
      index = static_cast<int64_t>(new_index + appended++);
      appended_ids[token.content] = index;
    }
    added.decoder[index] = token;
    added.encoder[token.content] = index;
  }
}

}  // namespace

TokenizerSettings load_settings(const TokenizerFiles& in, size_t default_max_length,
                                const std::map<std::string, std::string>& defaults,
                                const std::vector<std::string>& wrap_as_added_token,
                                const std::function<std::optional<int64_t>(const std::string&)>& vocab_id,
                                const std::function<size_t()>& vocab_keys) {
  TokenizerSettings settings;
  const fs::path config_path = in.dir / "tokenizer_config.json";
  const Json init = in.tokenizer_config.is_null() ? Json::object() : in.tokenizer_config;
  settings.config = Config(init, config_path);
  read_length_and_sides(init, default_max_length, settings);

  // added_tokens_decoder (tokenizers saved by transformers >= 4.34); otherwise the older files.
  SpecialTokenFiles files;
  read_config_specials(init, config_path, files);
  if (init.contains("added_tokens_decoder")) {
    read_added_tokens_decoder(init, config_path, files);
  } else {
    read_special_tokens_map(in, files);
    read_added_tokens_json(in, files);
  }
  apply_constructor(files, defaults, wrap_as_added_token);
  const std::vector<std::pair<std::string, SpecialValue>> ordered = ordered_special_tokens(init, config_path, files);

  AddedVocabulary& added = settings.added;
  added.decoder = files.added_decoder;
  for (const auto& [id, token] : added.decoder) added.encoder[token.content] = id;
  const std::vector<SpecialValue> extended = record_special_tokens(added, ordered);
  add_special_tokens(added, extended, vocab_id, vocab_keys);
  for (const auto& [id, token] : added.decoder) added.trie.add(token.content);
  for (const auto& [content, id] : added.encoder) added.encoder_utf8[encode_utf8(content)] = id;
  return settings;
}

TokenizerFiles read_tokenizer_files(const fs::path& dir, const char* vocab_file, const char* vocab_role,
                                    const char* merges_file, const char* merges_role) {
  auto read_text = [&](const char* name, const char* role) {
    const fs::path path = dir / name;
    if (!fs::is_regular_file(path)) throw Error(path.string() + ": file not found (" + std::string(role) + ")");
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (!ec && size > kMaxJsonFile)
      throw Error(path.string() + ": " + std::to_string(size) + " bytes is over the " +
                  std::to_string(kMaxJsonFile >> 20) + " MiB a vocabulary file may have");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path.string() + ": cannot open");
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
  };
  auto read_optional_json = [&](const char* name) {
    const fs::path path = dir / name;
    return fs::exists(path) ? read_json_file(path) : Json();
  };
  TokenizerFiles files;
  files.dir = dir;
  files.vocab = read_text(vocab_file, vocab_role);
  if (merges_file) files.merges = read_text(merges_file, merges_role);
  files.tokenizer_config = read_optional_json("tokenizer_config.json");
  files.special_tokens_map = read_optional_json("special_tokens_map.json");
  files.added_tokens = read_optional_json("added_tokens.json");
  return files;
}

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  std::string line;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      lines.push_back(std::move(line));
      line.clear();
    } else {
      line += c;
    }
  }
  if (!line.empty()) lines.push_back(std::move(line));
  return lines;
}

// =============================================================================================
// The shared encode: tokenize, convert, truncate, add specials, pad
// =============================================================================================

Encoding SlowTokenizer::encode(const std::string& utf8_text) const {
  std::vector<int64_t> content = tokenize(utf8_text).ids;
  Encoding encoding;
  encoding.content_tokens = content.size();
  // truncation=True ("longest_first") keeps max_length - 2 content ids.
  size_t keep = std::min(content.size(), settings_.max_length - 2);
  if (settings_.truncate_left) content.erase(content.begin(), content.end() - static_cast<ptrdiff_t>(keep));
  else content.resize(keep);
  encoding.kept_tokens = keep;
  encoding.ids = wrap(content, nullptr);
  encoding.tokens.reserve(encoding.ids.size());
  for (int64_t id : encoding.ids) encoding.tokens.push_back(id_to_token(id));
  return encoding;
}

TextTokens SlowTokenizer::tokenize(const std::string& utf8_text) const {
  TextTokens tokens;
  for (const Piece& piece : settings_.added.split(decode_utf8(utf8_text), lower_case_outside_specials_)) {
    if (piece.added_id) {
      auto expansion = expansions_.find(*piece.added_id);
      if (expansion == expansions_.end()) {
        // A comma that is an added token of its own (Taiyi-XL's "，" and "、") is one for the chunking rule,
        // as the same comma is when it comes out of the vocabulary (tokenization_clip.cpp, _bert.cpp).
        tokens.ids.push_back(*piece.added_id);
        tokens.commas.push_back(piece.text == U"," || piece.text == U"\uFF0C" || piece.text == U"\u3001");
      } else {
        tokens.ids.insert(tokens.ids.end(), expansion->second.begin(), expansion->second.end());
        tokens.commas.insert(tokens.commas.end(), expansion->second.size(), false);
      }
    } else {
      tokenize_piece(piece.text, tokens.ids, &tokens.commas);
    }
  }
  return tokens;
}

std::vector<int64_t> SlowTokenizer::wrap(const std::vector<int64_t>& content, std::vector<double>* weights) const {
  if (content.size() > settings_.max_length - 2)
    throw Error("wrap: " + std::to_string(content.size()) + " content tokens, at most " +
                std::to_string(settings_.max_length - 2) + " fit");
  std::vector<int64_t> ids;
  ids.reserve(settings_.max_length);
  ids.push_back(first_id_);
  ids.insert(ids.end(), content.begin(), content.end());
  ids.push_back(last_id_);
  const size_t padding = settings_.max_length - ids.size();
  if (settings_.pad_left) ids.insert(ids.begin(), padding, pad_id_);
  else ids.insert(ids.end(), padding, pad_id_);
  if (weights) {
    weights->resize(content.size(), 1.0);
    weights->insert(weights->begin(), 1.0);
    weights->push_back(1.0);
    weights->insert(settings_.pad_left ? weights->begin() : weights->end(), padding, 1.0);
  }
  return ids;
}

size_t SlowTokenizer::vocab_size() const {
  size_t count = vocab_count();
  for (const auto& [content, id] : settings_.added.encoder)
    if (!vocab_lookup(encode_utf8(content))) ++count;
  return count;
}

std::vector<int64_t> SlowTokenizer::add_embedding_tokens(const std::string& name, size_t vectors) {
  std::vector<std::u32string> contents;
  for (size_t i = 0; i < vectors; ++i) {
    std::u32string content = decode_utf8(i == 0 ? name : name + "_" + std::to_string(i));
    if (lower_case_outside_specials_) content = python_lower(content);
    const std::string utf8 = encode_utf8(content);
    if (content.empty() || vocab_lookup(utf8) || settings_.added.find(content))
      throw Error("textual inversion: token '" + utf8 + "' is already in the tokenizer's vocabulary (" +
                  dir_.string() + "); rename the embedding");
    contents.push_back(std::move(content));
  }
  const int64_t first = static_cast<int64_t>(vocab_size());
  std::vector<int64_t> ids;
  for (size_t i = 0; i < contents.size(); ++i) {
    const int64_t id = first + static_cast<int64_t>(i);
    AddedToken token;
    token.content = contents[i];
    settings_.added.decoder[id] = token;
    settings_.added.encoder[token.content] = id;
    settings_.added.encoder_utf8[encode_utf8(token.content)] = id;
    settings_.added.trie.add(token.content);
    ids.push_back(id);
  }
  if (ids.size() > 1) expansions_[ids.front()] = ids;
  return ids;
}

std::string SlowTokenizer::id_to_token(int64_t id) const {
  auto it = settings_.added.decoder.find(id);
  if (it != settings_.added.decoder.end()) return encode_utf8(it->second.content);
  return vocab_token(id);
}

int64_t SlowTokenizer::special_id(const char* attribute, const std::unordered_map<std::string, int64_t>& vocab,
                                  std::optional<int64_t> unk) const {
  auto it = settings_.added.special_by_attribute.find(attribute);
  if (it == settings_.added.special_by_attribute.end())
    throw Error((dir_ / "tokenizer_config.json").string() + ": no " + attribute +
                " (the pipeline's padding and special tokens need it)");
  if (auto id = settings_.added.find(it->second)) return *id;
  auto v = vocab.find(encode_utf8(it->second));
  if (v != vocab.end()) return v->second;
  if (unk) return *unk;
  throw Error((dir_ / "tokenizer_config.json").string() + ": " + attribute + " '" + encode_utf8(it->second) +
              "' is not in the vocabulary");
}

}  // namespace taiyi::tokenizers
