// `taiyi serve`'s HTTP side: the web UI's /sdapi/v1 routes and the page at / over a GenerationService,
// on Debian's cpp-httplib (0.11.4). Safe by default: loopback unless --listen, HTTP Basic auth on every
// route and the page when --api-auth is given (constant-time comparison), CORS only for the origins
// given, bodies only with a Content-Length within the limit (checked before the body is read: 0.11.4
// does not bound chunked uploads), a request rate per client address, and every failure that request's
// JSON error with a status code.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "taiyi/server/generation_service.h"

namespace taiyi {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 7860;
  std::vector<std::pair<std::string, std::string>> credentials;  // --api-auth user:pass,...
  std::vector<std::string> cors_origins;                         // --cors-allow-origins ("*": any)
  size_t max_body = size_t{64} << 20;                            // bytes of a request body
  double rate_limit = 50;                                        // requests a second per client address (0: none)
  double rate_burst = 1000;                                      // requests a client may send at once
  // Threads answering requests: every queued request holds one while it waits, and /progress, /interrupt
  // and the lists must still be answered then (the CLI gives --queue + 16).
  size_t threads = 32;
};

// --api-auth's value: "user:pass[,user:pass...]" (a password cannot hold ':' or ',', as in the web UI).
// Error naming the malformed entry.
std::vector<std::pair<std::string, std::string>> parse_api_auth(const std::string& value);

class HttpServer {
 public:
  HttpServer(GenerationService& service, HttpOptions options);
  ~HttpServer();
  // Binds (Error naming host and port when it cannot) and returns the port bound (options.port, or the
  // one the system chose for port 0).
  int bind();
  void serve();  // answers requests until stop()
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace taiyi
