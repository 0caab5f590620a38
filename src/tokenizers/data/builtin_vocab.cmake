# Included by the top-level CMakeLists.txt and tests/fuzz/CMakeLists.txt: the vocabularies that
# src/tokenizers/builtin_vocab.cpp embeds with .incbin. The compiler cannot see that the object depends on
# them, so it is said here: OBJECT_DEPENDS for the build tool, and their SHA-256 in a definition that
# the source writes into its assembly, for ccache (which hashes the preprocessed source, not the
# assembler's inputs). A changed file reruns
# the configure step (CMAKE_CONFIGURE_DEPENDS), which recomputes the hash.
set(TAIYI_VOCAB_DIR ${CMAKE_CURRENT_LIST_DIR})
set(TAIYI_VOCAB_FILES ${TAIYI_VOCAB_DIR}/bpe_simple_vocab_16e6.txt ${TAIYI_VOCAB_DIR}/bert-base-chinese-vocab.txt)
set(TAIYI_VOCAB_SHA256 "")
foreach(file IN LISTS TAIYI_VOCAB_FILES)
  file(SHA256 ${file} hash)
  string(APPEND TAIYI_VOCAB_SHA256 ${hash})
endforeach()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${TAIYI_VOCAB_FILES})
get_filename_component(TAIYI_VOCAB_SOURCE ${TAIYI_VOCAB_DIR}/../builtin_vocab.cpp ABSOLUTE)
set_source_files_properties(${TAIYI_VOCAB_SOURCE} PROPERTIES
  OBJECT_DEPENDS "${TAIYI_VOCAB_FILES}" SKIP_PRECOMPILE_HEADERS ON
  COMPILE_DEFINITIONS "TAIYI_CLIP_BPE_FILE=\"${TAIYI_VOCAB_DIR}/bpe_simple_vocab_16e6.txt\";TAIYI_BERT_VOCAB_FILE=\"${TAIYI_VOCAB_DIR}/bert-base-chinese-vocab.txt\";TAIYI_VOCAB_DATA_SHA256=\"${TAIYI_VOCAB_SHA256}\"")
