// transformers' BertModel (models/bert/modeling_bert.py) behind the TextEncoderImpl interface, with
// transformers' state-dict keys (embeddings.word_embeddings.weight,
// encoder.layer.N.attention.self.query.weight, ...). Sizes come from text_encoder/config.json.
// Inference only.
#pragma once

#include <memory>

#include "taiyi/loaders/model_folder.h"
#include "taiyi/models/text_encoder.h"

namespace taiyi {

// Post-LayerNorm transformer, erf GELU, no attention mask, token types all zero (no pooler).
std::shared_ptr<TextEncoderImpl> make_bert_model(const Config& config);

}  // namespace taiyi
