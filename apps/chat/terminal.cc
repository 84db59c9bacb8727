#include "terminal.h"

#include <fcntl.h>
#include <histedit.h>
#include <langinfo.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <clocale>
#include <cwchar>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

namespace coda::chat {

namespace {

std::atomic<bool> g_interrupt{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT handler needs a lock-free flag");
// Self-pipe: the handler also writes a byte here, so that a wait for a key that began just
// before the signal (when the flag was still clear) wakes up all the same.
int g_wake[2] = {-1, -1};

void OnSigint(int) {
  g_interrupt.store(true);
  if (g_wake[1] >= 0) {
    const int saved = errno;
    [[maybe_unused]] const ssize_t n = ::write(g_wake[1], "", 1);  // non-blocking: a full pipe is awake anyway
    errno = saved;
  }
}

// libedit's character reader, replaced so that a Ctrl-C at the prompt is never lost: with
// libedit's own read() it is when the signal lands between the prompt being printed and the read
// starting (the read then blocks as if nothing happened). Multi-byte characters are decoded for
// the locale, as libedit's reader does.
int ReadKey(EditLine*, wchar_t* out) {
  std::mbstate_t state{};
  for (;;) {
    if (g_interrupt.load()) {
      errno = EINTR;
      return -1;
    }
    struct pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {g_wake[0], POLLIN, 0}};
    if (::poll(fds, g_wake[0] >= 0 ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (g_wake[0] >= 0 && (fds[1].revents & POLLIN)) {
      char drain[64];
      while (::read(g_wake[0], drain, sizeof drain) > 0) {
      }
      continue;  // the flag says whether it was a Ctrl-C
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char c;
    const ssize_t n = ::read(STDIN_FILENO, &c, 1);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -1;
    }
    wchar_t wc = 0;
    const size_t r = std::mbrtowc(&wc, &c, 1, &state);
    if (r == static_cast<size_t>(-2)) continue;  // more bytes of this character to come
    if (r == static_cast<size_t>(-1)) {
      state = std::mbstate_t{};
      wc = 0xFFFD;
    }
    *out = wc;
    return 1;
  }
}

void StripNewline(std::string* s) {
  while (!s->empty() && (s->back() == '\n' || s->back() == '\r')) s->pop_back();
}

class EditLineReader final : public LineReader {
 public:
  EditLineReader(const char* program, std::string prompt, std::string history_path)
      : prompt_(std::move(prompt)), history_path_(std::move(history_path)) {
    hist_ = history_init();
    history(hist_, &ev_, H_SETSIZE, 1000);
    history(hist_, &ev_, H_SETUNIQUE, 1);
    if (!history_path_.empty()) history(hist_, &ev_, H_LOAD, history_path_.c_str());  // absent at first: fine
    el_ = el_init(program, stdin, stdout, stderr);
    el_set(el_, EL_CLIENTDATA, this);
    el_set(el_, EL_PROMPT, &EditLineReader::PromptOf);
    el_set(el_, EL_EDITOR, "emacs");
    el_set(el_, EL_HIST, history, hist_);
    el_set(el_, EL_GETCFN, &ReadKey);
    // libedit's handlers put the terminal back for Ctrl-Z and resume editing after fg (they pass
    // each signal on to ours, so Ctrl-C still arrives).
    el_set(el_, EL_SIGNAL, 1);
    el_source(el_, nullptr);  // the user's ~/.editrc, if any
  }
  ~EditLineReader() override {
    el_end(el_);
    history_end(hist_);
  }

  Got Read(std::string* line) override {
    int n = 0;
    errno = 0;
    const char* got = el_gets(el_, &n);
    if (got == nullptr) {
      // Ctrl-C interrupts the read (the handler has no SA_RESTART); Ctrl-D on an empty line is EOF.
      if (g_interrupt.exchange(false) || (n < 0 && errno == EINTR)) {
        const LineInfo* li = el_line(el_);
        return li != nullptr && li->lastchar > li->buffer ? Got::kDropped : Got::kInterrupted;
      }
      return Got::kEof;
    }
    line->assign(got, static_cast<size_t>(n));
    StripNewline(line);
    return Got::kLine;
  }

  void AddHistory(const std::string& line) override {
    if (line.find_first_not_of(" \t") == std::string::npos) return;
    history(hist_, &ev_, H_ENTER, line.c_str());
    // Saved at once so a crash or a kill keeps it; failures only cost the history.
    if (!history_path_.empty()) history(hist_, &ev_, H_SAVE, history_path_.c_str());
  }

 private:
  static const char* PromptOf(EditLine* el) {
    void* self = nullptr;
    el_get(el, EL_CLIENTDATA, &self);
    return static_cast<EditLineReader*>(self)->prompt_.c_str();
  }

  std::string prompt_, history_path_;
  EditLine* el_ = nullptr;
  History* hist_ = nullptr;
  HistEvent ev_{};
};

class PlainLineReader final : public LineReader {
 public:
  ~PlainLineReader() override { std::free(buf_); }
  Got Read(std::string* line) override {
    errno = 0;
    const ssize_t n = ::getline(&buf_, &cap_, stdin);
    if (n < 0) {
      const bool interrupted = errno == EINTR || g_interrupt.load();
      std::clearerr(stdin);
      if (interrupted) {
        g_interrupt.store(false);
        return Got::kInterrupted;
      }
      return Got::kEof;
    }
    line->assign(buf_, static_cast<size_t>(n));
    StripNewline(line);
    return Got::kLine;
  }
  void AddHistory(const std::string&) override {}

 private:
  char* buf_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace

void InstallInterruptHandler() {
  struct sigaction sa {};
  sa.sa_handler = OnSigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked read or poll returns EINTR
  if (g_wake[0] < 0 && ::pipe2(g_wake, O_CLOEXEC | O_NONBLOCK) != 0) g_wake[0] = g_wake[1] = -1;
  sigaction(SIGINT, &sa, nullptr);
}

std::atomic<bool>& InterruptFlag() { return g_interrupt; }

std::unique_ptr<LineReader> LineReader::Create(const char* program, std::string prompt, std::string history_path) {
  if (::isatty(STDIN_FILENO)) return std::make_unique<EditLineReader>(program, std::move(prompt), std::move(history_path));
  return std::make_unique<PlainLineReader>();
}

Style Style::For(FILE* stream) {
  Style s;
  const char* term = std::getenv("TERM");
  const char* no_color = std::getenv("NO_COLOR");
  s.enabled = ::isatty(::fileno(stream)) && (no_color == nullptr || *no_color == '\0') &&
              !(term != nullptr && std::strcmp(term, "dumb") == 0);
  return s;
}

std::string DefaultHistoryPath() {
  namespace fs = std::filesystem;
  fs::path dir;
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) dir = fs::path(x) / "coda";
  else if (const char* h = std::getenv("HOME"); h && *h) dir = fs::path(h) / ".local" / "state" / "coda";
  else return "";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return "";
  return (dir / "chat_history").string();
}

void SetUtf8Locale() {
  if (std::setlocale(LC_CTYPE, "") && std::strcmp(nl_langinfo(CODESET), "UTF-8") == 0) return;
  std::setlocale(LC_CTYPE, "C.UTF-8");
}

}  // namespace coda::chat
