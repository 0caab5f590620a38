// `taiyi serve`: the model stays loaded behind the AUTOMATIC1111 web UI's HTTP API and a web page
// (include/taiyi/server/). Options as the web UI's command line names them (--listen, --port, --api-auth,
// --cors-allow-origins) and taiyi's generation options as the server's defaults.
#pragma once

#include <string>

#include "taiyi/server/generation_service.h"
#include "taiyi/server/http_server.h"

namespace CLI {
class App;
}

namespace taiyi::cli {

struct ServeCommand {
  ServeOptions service;
  HttpOptions http;
  bool listen = false;       // --listen: every interface (0.0.0.0)
  std::string api_auth;      // USER:PASS[,USER:PASS]
  std::string cors_origins;  // comma-separated
  double max_body_mb = 64;
};
CLI::App* add_serve_command(CLI::App& app, ServeCommand& command);
// Serves until SIGINT or SIGTERM; 0 then.
int run_serve(ServeCommand& command);

}  // namespace taiyi::cli
