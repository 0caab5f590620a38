# Included by the top-level CMakeLists.txt: the page that src/server/web_page.cpp embeds with .incbin, as
# src/tokenizers/data/builtin_vocab.cmake does for the vocabularies. The compiler cannot see that the
# object depends on the file, so it is said here: OBJECT_DEPENDS for the build tool, and the file's SHA-256
# in a definition that the source writes into its assembly, for ccache (which hashes the preprocessed
# source, not the assembler's inputs). A changed page reruns the configure step (CMAKE_CONFIGURE_DEPENDS),
# which recomputes the hash.
set(TAIYI_WEB_PAGE ${CMAKE_CURRENT_LIST_DIR}/index.html)
file(SHA256 ${TAIYI_WEB_PAGE} TAIYI_WEB_PAGE_SHA256)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${TAIYI_WEB_PAGE})
get_filename_component(TAIYI_WEB_PAGE_SOURCE ${CMAKE_CURRENT_LIST_DIR}/../web_page.cpp ABSOLUTE)
set_source_files_properties(${TAIYI_WEB_PAGE_SOURCE} PROPERTIES
  OBJECT_DEPENDS "${TAIYI_WEB_PAGE}" SKIP_PRECOMPILE_HEADERS ON
  COMPILE_DEFINITIONS "TAIYI_WEB_PAGE_FILE=\"${TAIYI_WEB_PAGE}\";TAIYI_WEB_PAGE_SHA256=\"${TAIYI_WEB_PAGE_SHA256}\"")
