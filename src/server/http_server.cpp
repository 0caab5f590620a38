// The HTTP side of `taiyi serve`; see include/taiyi/server/http_server.h. Routes as the web UI's
// modules/api/api.py registers them; errors in its api_middleware shape.
#include "taiyi/server/http_server.h"

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include <httplib.h>

#include "taiyi/server/a1111_api.h"
#include "taiyi/server/web_page.h"
#include "taiyi/utils/base64.h"
#include "taiyi/utils/error.h"
#include "taiyi/utils/image.h"
#include "taiyi/utils/json.h"

namespace taiyi {

using Json = nlohmann::json;

std::vector<std::pair<std::string, std::string>> parse_api_auth(const std::string& value) {
  std::vector<std::pair<std::string, std::string>> credentials;
  std::stringstream entries(value);
  std::string entry;
  while (std::getline(entries, entry, ',')) {
    const size_t colon = entry.find(':');
    if (colon == std::string::npos || colon == 0 || entry.find(':', colon + 1) != std::string::npos)
      throw Error("--api-auth " + quoted_excerpt(entry) + ": expected USER:PASS (one ':'), entries separated by ','");
    credentials.emplace_back(entry.substr(0, colon), entry.substr(colon + 1));
  }
  if (credentials.empty()) throw Error("--api-auth: expected USER:PASS[,USER:PASS...]");
  return credentials;
}

namespace {

// secrets.compare_digest: the time taken does not depend on where the strings differ.
bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

// Linux keeps a connection whose peer has closed its side in CLOSE_WAIT (state 08 in /proc/net/tcp):
// that is how a request learns its client went away (cpp-httplib 0.11.4 gives handlers no socket).
// A connection no longer listed is gone too.
std::string proc_net_address(const std::string& address, int port, bool* v6) {
  char text[64];
  in_addr v4{};
  in6_addr v6addr{};
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1) {
    *v6 = false;
    std::snprintf(text, sizeof text, "%08X:%04X", v4.s_addr, static_cast<unsigned>(port));
    return text;
  }
  if (inet_pton(AF_INET6, address.c_str(), &v6addr) != 1) return "";
  *v6 = true;
  uint32_t words[4];
  std::memcpy(words, &v6addr, sizeof words);
  std::snprintf(text, sizeof text, "%08X%08X%08X%08X:%04X", words[0], words[1], words[2], words[3], static_cast<unsigned>(port));
  return text;
}

bool peer_closed(const httplib::Request& req) {
  bool v6 = false, remote_v6 = false;
  const std::string local = proc_net_address(req.local_addr, req.local_port, &v6);
  const std::string remote = proc_net_address(req.remote_addr, req.remote_port, &remote_v6);
  if (local.empty() || remote.empty()) return false;  // cannot tell: assume it is there
  std::ifstream table(v6 ? "/proc/net/tcp6" : "/proc/net/tcp");
  if (!table) return false;
  std::string line;
  std::getline(table, line);  // header
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string slot, local_field, remote_field, state;
    fields >> slot >> local_field >> remote_field >> state;
    if (local_field == local && remote_field == remote) return state == "08" || state == "07";  // CLOSE_WAIT, CLOSE
  }
  return true;
}

void send_json(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& error) {
  if (error.status == 503) res.set_header("Retry-After", "5");
  send_json(res, error.status, api_error_body(error));
}

Json parse_body(const httplib::Request& req) {
  try {
    return parse_json_text(req.body, "request body");
  } catch (const Error& e) {
    throw ApiError(422, "RequestValidationError", e.what());
  }
}

// A token bucket per client address: `rate` requests a second, `burst` at once.
class RateLimiter {
 public:
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  bool allow(const std::string& client) {
    if (rate_ <= 0) return true;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    if (buckets_.size() > 10000) buckets_.clear();  // bounded memory whatever the clients
    Bucket& b = buckets_.try_emplace(client, Bucket{burst_, now}).first->second;
    b.tokens = std::min(burst_, b.tokens + rate_ * std::chrono::duration<double>(now - b.last).count());
    b.last = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

 private:
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point last;
  };
  double rate_, burst_;
  std::mutex mutex_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace

struct HttpServer::Impl {
  Impl(GenerationService& s, HttpOptions o) : service(s), options(std::move(o)), limiter(options.rate_limit, options.rate_burst) {}
  GenerationService& service;
  HttpOptions options;
  httplib::Server server;
  RateLimiter limiter;
  std::mt19937_64 seeds{std::random_device{}()};
  std::mutex seeds_mutex;

  uint64_t random_seed() {
    std::lock_guard<std::mutex> lock(seeds_mutex);
    return seeds() % 4294967294ull;  // processing.get_fixed_seed: random.randrange(4294967294)
  }
  bool authorized(const httplib::Request& req) const;
  bool cors(const httplib::Request& req, httplib::Response& res) const;
  httplib::Server::HandlerResponse screen(const httplib::Request& req, httplib::Response& res);
  void route(const char* method, const std::string& path, std::function<Json(const httplib::Request&)> handler);
  void add_routes();
  void add_generation_routes();
  void add_list_routes();
};

bool HttpServer::Impl::authorized(const httplib::Request& req) const {
  if (options.credentials.empty()) return true;  // no auth: any Authorization header is ignored
  const std::string header = req.get_header_value("Authorization");
  if (header.rfind("Basic ", 0) != 0) return false;
  std::string given;
  try {
    given = base64_decode(header.substr(6));
  } catch (const Error&) {
    return false;
  }
  bool ok = false;
  for (const auto& [user, password] : options.credentials) ok |= constant_time_equal(given, user + ":" + password);
  return ok;
}

// CORSMiddleware for --cors-allow-origins: the request's origin echoed when it is one of them.
bool HttpServer::Impl::cors(const httplib::Request& req, httplib::Response& res) const {
  const std::string origin = req.get_header_value("Origin");
  if (origin.empty() || options.cors_origins.empty()) return false;
  bool allowed = false;
  for (const std::string& o : options.cors_origins) allowed |= o == "*" || o == origin;
  if (!allowed) return false;
  res.set_header("Access-Control-Allow-Origin", origin);
  res.set_header("Access-Control-Allow-Credentials", "true");
  res.set_header("Vary", "Origin");
  return true;
}

// Before a body is read: rate, CORS preflight, credentials, body length.
httplib::Server::HandlerResponse HttpServer::Impl::screen(const httplib::Request& req, httplib::Response& res) {
  using R = httplib::Server::HandlerResponse;
  if (!limiter.allow(req.remote_addr)) {
    res.set_header("Retry-After", "1");
    send_error(res, ApiError(429, "HTTPException", "too many requests from " + req.remote_addr));
    return R::Handled;
  }
  const bool cross_origin = cors(req, res);
  if (req.method == "OPTIONS") {
    if (cross_origin) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      const std::string asked = req.get_header_value("Access-Control-Request-Headers");
      res.set_header("Access-Control-Allow-Headers", asked.empty() ? "*" : asked);
      res.set_header("Access-Control-Max-Age", "600");
    }
    res.status = 204;
    return R::Handled;
  }
  if (!authorized(req)) {
    res.set_header("WWW-Authenticate", "Basic");
    send_error(res, ApiError(401, "HTTPException", "Incorrect username or password"));
    return R::Handled;
  }
  if (req.has_header("Transfer-Encoding")) {
    send_error(res, ApiError(411, "HTTPException", "a request body needs a Content-Length (chunked uploads are refused)"));
    return R::Handled;
  }
  if (req.has_header("Content-Length")) {
    const std::string length = req.get_header_value("Content-Length");
    unsigned long long bytes = 0;
    if (length.empty() || length.size() > 19 || length.find_first_not_of("0123456789") != std::string::npos ||
        (bytes = std::stoull(length)) > options.max_body) {
      send_error(res, ApiError(413, "HTTPException", "request body of " + quoted_excerpt(length, 20) + " bytes: at most " +
                                                         std::to_string(options.max_body) + " (--max-body-mb)"));
      return R::Handled;
    }
  }
  return R::Unhandled;
}

void HttpServer::Impl::route(const char* method, const std::string& path, std::function<Json(const httplib::Request&)> handler) {
  auto wrapped = [this, handler](const httplib::Request& req, httplib::Response& res) {
    try {
      send_json(res, 200, handler(req));
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {
      send_error(res, ApiError(422, "RequestValidationError", e.what()));
    } catch (const std::bad_alloc&) {
      send_error(res, ApiError(500, "OutOfMemoryError", "not enough memory for this request"));
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, "RuntimeError", e.what()));
    }
  };
  if (std::string(method) == "GET") server.Get(path, wrapped);
  else server.Post(path, wrapped);
}

void HttpServer::Impl::add_generation_routes() {
  for (const bool img2img : {false, true}) {
    route("POST", img2img ? "/sdapi/v1/img2img" : "/sdapi/v1/txt2img", [this, img2img](const httplib::Request& req) {
      ApiGeneration g = parse_generation(parse_body(req), img2img, random_seed());
      return service.generate(std::move(g), [&req] { return peer_closed(req); });
    });
  }
  route("GET", "/sdapi/v1/progress", [this](const httplib::Request& req) {
    const std::string skip = req.get_param_value("skip_current_image");
    return service.progress(skip == "true" || skip == "True" || skip == "1");
  });
  route("POST", "/sdapi/v1/interrupt", [this](const httplib::Request&) {
    service.interrupt();
    return Json::object();
  });
  route("POST", "/sdapi/v1/skip", [this](const httplib::Request&) {
    service.skip();
    return Json::object();
  });
  route("GET", "/sdapi/v1/options", [this](const httplib::Request&) { return service.options(); });
  route("POST", "/sdapi/v1/options", [this](const httplib::Request& req) {
    service.set_options(parse_body(req), [&req] { return peer_closed(req); });
    return Json(nullptr);
  });
  route("POST", "/sdapi/v1/png-info", [this](const httplib::Request& req) {
    const Json body = parse_body(req);
    if (!body.is_object() || !body.contains("image") || !body["image"].is_string())
      throw ApiError(422, "RequestValidationError", "image: a base64 PNG is required");
    const std::string png = decode_image_field(body["image"].get<std::string>(), "image");
    Json items = Json::object();
    std::string parameters;
    try {
      for (const auto& [key, text] : parse_png_text(png, "image")) {
        if (key == "parameters") parameters = text;
        else items[key] = text;
      }
    } catch (const Error&) {
      // Not a PNG (a JPEG, say): no text chunks, as the web UI answers for an image without them.
    }
    return Json{{"info", parameters}, {"items", items}, {"parameters", parameters.empty() ? Json::object() : parse_infotext(parameters)}};
  });
}

void HttpServer::Impl::add_list_routes() {
  route("GET", "/sdapi/v1/sd-models", [this](const httplib::Request&) { return service.models(); });
  route("POST", "/sdapi/v1/refresh-checkpoints", [this](const httplib::Request&) {
    service.refresh_models();
    return Json(nullptr);
  });
  route("GET", "/sdapi/v1/samplers", [](const httplib::Request&) { return api_samplers(); });
  route("GET", "/sdapi/v1/schedulers", [](const httplib::Request&) { return api_schedulers(); });
  route("GET", "/sdapi/v1/loras", [this](const httplib::Request&) { return service.loras(); });
  route("GET", "/sdapi/v1/embeddings", [this](const httplib::Request&) { return service.embeddings(); });
  route("GET", "/sdapi/v1/memory", [this](const httplib::Request&) { return service.memory(); });
  route("GET", "/sdapi/v1/upscalers", [](const httplib::Request&) {
    return Json::array({{{"name", "None"}, {"model_name", nullptr}, {"model_path", nullptr}, {"model_url", nullptr}, {"scale", 4}}});
  });
  route("GET", "/sdapi/v1/latent-upscale-modes", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/sd-vae", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/hypernetworks", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/face-restorers", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/realesrgan-models", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/prompt-styles", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/scripts", [](const httplib::Request&) { return Json{{"txt2img", Json::array()}, {"img2img", Json::array()}}; });
  route("GET", "/sdapi/v1/script-info", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/extensions", [](const httplib::Request&) { return Json::array(); });
  route("GET", "/sdapi/v1/cmd-flags", [this](const httplib::Request&) {
    return Json{{"api", true}, {"nowebui", false}, {"listen", options.host != "127.0.0.1" && options.host != "localhost"},
                {"port", options.port}, {"api_auth", options.credentials.empty() ? Json(nullptr) : Json("<set>")},
                {"cors_allow_origins", options.cors_origins.empty() ? Json(nullptr) : Json(options.cors_origins)}};
  });
  for (const char* refresh : {"/sdapi/v1/refresh-loras", "/sdapi/v1/refresh-embeddings", "/sdapi/v1/refresh-vae",
                              "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint"})
    route("POST", refresh, [](const httplib::Request&) { return Json(nullptr); });
}

void HttpServer::Impl::add_routes() {
  add_generation_routes();
  add_list_routes();
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    const std::string_view page = web_page_html();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own answer
    const int status = res.status;
    send_json(res, status, api_error_body(ApiError(status, "HTTPException", status == 404 ? "Not Found: " + quoted_excerpt(req.path, 80) : "HTTP error " + std::to_string(status))));
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "RuntimeError", "internal error"));
  });
}

HttpServer::HttpServer(GenerationService& service, HttpOptions options) : impl_(new Impl(service, std::move(options))) {
  httplib::Server& s = impl_->server;
  const size_t threads = impl_->options.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.set_payload_max_length(impl_->options.max_body);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(30, 0);
  s.set_keep_alive_max_count(100);
  // An idle connection holds a thread this long, and stopping waits for it (cpp-httplib's keep-alive wait).
  s.set_keep_alive_timeout(5);
  // Small answers go out at once: with Nagle's algorithm a keep-alive client's delayed ACK held each
  // /progress answer 40 ms.
  s.set_tcp_nodelay(true);
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) { return impl_->screen(req, res); });
  impl_->add_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  httplib::Server& s = impl_->server;
  const HttpOptions& o = impl_->options;
  const int port = o.port == 0 ? s.bind_to_any_port(o.host) : (s.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0) throw Error("serve: cannot listen on " + o.host + ":" + std::to_string(o.port) + " (in use, or not an address of this machine)");
  impl_->options.port = port;
  return port;
}

void HttpServer::serve() { impl_->server.listen_after_bind(); }

void HttpServer::stop() { impl_->server.stop(); }

}  // namespace taiyi
