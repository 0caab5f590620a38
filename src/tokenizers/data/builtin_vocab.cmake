# Included by the top-level CMakeLists.txt and tests/fuzz/CMakeLists.txt: the vocabularies that
# src/tokenizers/builtin_vocab.cpp embeds with .incbin. OpenAI's BPE merges are kept as OpenAI ships them,
# gzipped (1.3 MB instead of 3.1 MB in the repository), and inflated here at configure time with gzip into
# the build folder. The compiler cannot see that the object depends on the files, so it is said here:
# OBJECT_DEPENDS for the build tool, and their SHA-256 in a definition that the source writes into its
# assembly, for ccache (which hashes the preprocessed source, not the assembler's inputs). A changed file
# reruns the configure step (CMAKE_CONFIGURE_DEPENDS), which inflates it and recomputes the hash.
set(TAIYI_VOCAB_DIR ${CMAKE_CURRENT_LIST_DIR})
set(TAIYI_CLIP_BPE_GZ ${TAIYI_VOCAB_DIR}/bpe_simple_vocab_16e6.txt.gz)
set(TAIYI_CLIP_BPE ${CMAKE_BINARY_DIR}/vocab/bpe_simple_vocab_16e6.txt)
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/vocab)
execute_process(COMMAND gzip -dc ${TAIYI_CLIP_BPE_GZ} OUTPUT_FILE ${TAIYI_CLIP_BPE} RESULT_VARIABLE inflated)
if(NOT inflated EQUAL 0)
  message(FATAL_ERROR "gzip -dc ${TAIYI_CLIP_BPE_GZ} failed (${inflated})")
endif()
set(TAIYI_VOCAB_FILES ${TAIYI_CLIP_BPE} ${TAIYI_VOCAB_DIR}/bert-base-chinese-vocab.txt)
set(TAIYI_VOCAB_SHA256 "")
foreach(file IN LISTS TAIYI_VOCAB_FILES)
  file(SHA256 ${file} hash)
  string(APPEND TAIYI_VOCAB_SHA256 ${hash})
endforeach()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${TAIYI_CLIP_BPE_GZ} ${TAIYI_VOCAB_DIR}/bert-base-chinese-vocab.txt)
get_filename_component(TAIYI_VOCAB_SOURCE ${TAIYI_VOCAB_DIR}/../builtin_vocab.cpp ABSOLUTE)
set_source_files_properties(${TAIYI_VOCAB_SOURCE} PROPERTIES
  OBJECT_DEPENDS "${TAIYI_VOCAB_FILES}" SKIP_PRECOMPILE_HEADERS ON
  COMPILE_DEFINITIONS "TAIYI_CLIP_BPE_FILE=\"${TAIYI_CLIP_BPE}\";TAIYI_BERT_VOCAB_FILE=\"${TAIYI_VOCAB_DIR}/bert-base-chinese-vocab.txt\";TAIYI_VOCAB_DATA_SHA256=\"${TAIYI_VOCAB_SHA256}\"")
