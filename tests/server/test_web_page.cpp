// The page embedded in the binary is src/server/data/index.html byte for byte (a stale object from a
// compiler cache would differ), and it carries what the browser test (tests/server/test_page.py) and
// users rely on: the ids of its controls, the routes it calls, and no resource from the network.
#include <fstream>
#include <sstream>

#include "taiyi/server/web_page.h"
#include "test_util.h"

namespace {

std::string source_page() {
  std::ifstream in(taiyi::test::source_dir() / "src" / "server" / "data" / "index.html", std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST(WebPage, EmbedsTheSourceFile) {
  const std::string_view html = taiyi::web_page_html();
  const std::string file = source_page();
  ASSERT_GT(file.size(), 1000u);
  EXPECT_EQ(html.size(), file.size());
  EXPECT_TRUE(html == file) << "the embedded page differs from src/server/data/index.html";
  EXPECT_LT(html.size(), 40u * 1024) << "the page should stay small";
  EXPECT_EQ(html.data()[html.size()], '\0');  // the NUL .incbin leaves after it
}

TEST(WebPage, HasTheControlsAndRoutes) {
  const std::string_view html = taiyi::web_page_html();
  for (const char* needle :
       {"id=\"prompt\"", "id=\"negative\"", "id=\"sampler\"", "id=\"steps\"", "id=\"cfg\"", "id=\"width\"", "id=\"height\"",
        "id=\"seed\"", "id=\"count\"", "id=\"init-image\"", "id=\"mask\"", "id=\"strength\"", "id=\"generate\"",
        "id=\"interrupt\"", "id=\"progress\"", "id=\"eta\"", "id=\"preview\"", "id=\"gallery\"", "id=\"error\"", "id=\"lang\"",
        "class=\"example\"", "/sdapi/v1/samplers", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/progress",
        "/sdapi/v1/interrupt", "小桥流水人家，Van Gogh style。", "穿着宇航服的哈士奇。"})
    EXPECT_NE(html.find(needle), std::string_view::npos) << "the page lacks " << needle;
  for (const char* outside : {"http://", "https://", "//cdn", "@import", "<link"})
    EXPECT_EQ(html.find(outside), std::string_view::npos) << "the page reaches outside: " << outside;
}
