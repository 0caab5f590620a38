// The page that `taiyi serve` answers at "/": src/server/data/index.html, embedded in the binary. One
// self-contained HTML file (inline CSS and script, no network but the server's own /sdapi/v1 routes), so
// that it works offline: prompt, sampler and sizes, init image and mask, progress with a live preview,
// and a gallery of results with their infotext; in Chinese or English.
#pragma once

#include <string_view>

namespace taiyi {

// The HTML, UTF-8, served as text/html; charset=utf-8.
std::string_view web_page_html();

}  // namespace taiyi
