// `taiyi serve`; see include/taiyi/cli/serve.h.
#include "taiyi/cli/serve.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>

#include "taiyi/cli/options.h"
#include "taiyi/utils/error.h"

namespace taiyi::cli {

CLI::App* add_serve_command(CLI::App& app, ServeCommand& c) {
  CLI::App* serve = app.add_subcommand("serve", "keep the model loaded behind the AUTOMATIC1111 web UI's API (/sdapi/v1) and a web page");
  PipelineOptions& p = c.service.pipeline;
  c.service.model = default_model();
  add_model_option(serve, c.service.model);
  serve->add_option("--models-dir", c.service.models_dir,
                    "a folder of models (diffusers folders, .safetensors/.ckpt files) clients may switch between");
  serve->add_option("--host", c.http.host, "address to listen on")->capture_default_str();
  serve->add_option("--port", c.http.port, "port (0: any free one, printed)")->capture_default_str();
  serve->add_flag("--listen", c.listen, "listen on every interface (0.0.0.0); use with --api-auth");
  serve->add_option("--api-auth", c.api_auth, "HTTP Basic credentials required on every route and the page")->type_name("USER:PASS[,...]");
  serve->add_option("--cors-allow-origins", c.cors_origins, "origins (comma-separated, or *) whose pages may call the API");
  serve->add_option("--queue", c.service.queue, "requests that may wait beyond the running one (more get 503)")->capture_default_str();
  serve->add_option("--outdir", c.service.outdir, "where requests with save_images write their PNGs (default: nowhere)");
  serve->add_option("--preview-every", c.service.preview_every, "a live preview every N steps in /progress (0: none)")->capture_default_str();
  serve->add_option("--taesd", c.service.taesd, "TAESD weights (diffusers AutoencoderTiny folder or file, or madebyollin's "
                                                "taesd_decoder) for full-size live previews");
  serve->add_option("--max-body-mb", c.max_body_mb, "largest request body in MiB")->capture_default_str();
  serve->add_option("--rate-limit", c.http.rate_limit, "requests a second per client address (0: no limit)")->capture_default_str();
  serve->add_option("--device", p.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  serve->add_option("--precision", p.precision, "auto (fp16 on CUDA, fp32 on CPU), fp16, fp32 or bf16")
      ->check(CLI::IsMember({"auto", "fp16", "fp32", "bf16"}))
      ->capture_default_str();
  serve->add_option("--vae-precision", p.vae_precision, "auto or fp32")->check(CLI::IsMember({"auto", "fp32"}))->capture_default_str();
  serve->add_option("--vae-tiling", p.vae_tiling, "auto, on or off")->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  serve->add_option("--vae-tile-size", p.vae_tile_size, "VAE tile side in pixels (0: the VAE config's)")->capture_default_str();
  serve->add_option("--eta", p.eta, "DDIM eta (0: deterministic)")->capture_default_str();
  add_numerics_options(serve, p.tf32, p.cudnn_benchmark);
  serve->add_flag("--channels-last", p.channels_last, "channels_last memory format on CUDA");
  serve->add_flag("--offload", p.offload,
                  "CUDA: keep the text encoders in host memory except while encoding (SDXL in fp16 on 8 GB cards)");
  p.lora_dir = cache_folder("loras");
  p.embeddings_dir = cache_folder("embeddings");
  serve->add_option("--lora-dir", p.lora_dir, "where a prompt's <lora:NAME:WEIGHT> finds NAME.safetensors")->capture_default_str();
  serve->add_option("--embeddings-dir", p.embeddings_dir, "textual-inversion files used when their name appears in a prompt")
      ->capture_default_str();
  serve->add_option("--embedding", p.embedding_files, "a textual-inversion file loaded at start; repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_model_source_options(serve, p.source);
  return serve;
}

int run_serve(ServeCommand& c) {
  if (c.listen) c.http.host = "0.0.0.0";
  if (!c.api_auth.empty()) c.http.credentials = parse_api_auth(c.api_auth);
  std::stringstream origins(c.cors_origins);
  for (std::string origin; std::getline(origins, origin, ',');)
    if (!origin.empty()) c.http.cors_origins.push_back(origin);
  if (c.max_body_mb <= 0 || c.max_body_mb > 4096) throw Error("--max-body-mb: between 0 and 4096");
  c.http.max_body = static_cast<size_t>(c.max_body_mb * 1024 * 1024);
  if (c.service.queue > 1024) throw Error("--queue " + std::to_string(c.service.queue) + ": at most 1024");
  c.http.threads = c.service.queue + 16;
  // SIGINT and SIGTERM go to one thread that stops the server (every thread made from here on inherits
  // the blocked mask); a request never sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-answer is that answer's write error, not the server's end
  std::cerr << "taiyi: loading " << (c.service.model.empty() ? c.service.models_dir : c.service.model) << "\n";
  c.service.pipeline.notice = [](const std::string& text) { std::cerr << "taiyi: warning: " << text << "\n"; };
  GenerationService service(c.service);
  HttpServer server(service, c.http);
  const int port = server.bind();
  if (c.listen && c.http.credentials.empty())
    std::cerr << "taiyi: warning: listening on every interface without --api-auth: anyone who reaches this machine can use it\n";
  // cpp-httplib 0.11.4 ends its accept loop on any accept() error but EMFILE, EINTR and EAGAIN (a client
  // that resets before it is accepted gives ECONNABORTED): then taiyi listens again, unless stopping.
  std::atomic<bool> stopping{false}, finished{false};
  std::thread stopper([&] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    if (finished) return;
    std::cerr << "taiyi: stopping\n";
    stopping = true;
    service.shutdown();
    while (!finished) {  // again until the main thread has seen it: a stop between two listens is lost
      server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::cerr << "taiyi: serving on http://" << c.http.host << ":" << port << " (the API at /sdapi/v1, the page at /)" << std::endl;
  for (;;) {
    server.serve();
    if (stopping) break;
    std::cerr << "taiyi: warning: the listening socket failed (" << std::strerror(errno) << "); listening again\n";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    try {
      server.bind();
    } catch (const Error& e) {
      std::cerr << "taiyi: error: " << e.what() << "\n";
      break;
    }
    if (stopping) break;
  }
  finished = true;
  pthread_kill(stopper.native_handle(), SIGTERM);  // ended another way: wake the waiting thread
  stopper.join();
  return 0;
}

}  // namespace taiyi::cli
