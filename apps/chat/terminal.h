// The terminal side of the chat: Ctrl-C, line editing with history (libedit), colours.
#pragma once

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>

namespace coda::chat {

// SIGINT only sets a flag: generation polls it between tokens, and a read at the prompt returns
// kInterrupted. Installed without SA_RESTART so that a blocked read wakes up.
void InstallInterruptHandler();
std::atomic<bool>& InterruptFlag();

// Reads the user's lines: libedit (emacs keys, ~/.editrc, history saved to a file) when stdin is
// a terminal, plain lines otherwise (piped input, no prompt shown).
class LineReader {
 public:
  // kDropped: Ctrl-C on a line with text, which is thrown away (as shells do); kInterrupted:
  // Ctrl-C on an empty line.
  enum class Got { kLine, kDropped, kInterrupted, kEof };

  // history_path may be empty (no saved history).
  static std::unique_ptr<LineReader> Create(const char* program, std::string prompt, std::string history_path);
  virtual ~LineReader() = default;

  virtual Got Read(std::string* line) = 0;
  virtual void AddHistory(const std::string& line) = 0;
};

// ANSI styling for one stream, empty strings when it is not a terminal (or NO_COLOR is set,
// or TERM=dumb).
struct Style {
  static Style For(FILE* stream);
  bool enabled = false;
  const char* dim() const { return enabled ? "\x1b[2m" : ""; }
  const char* bold() const { return enabled ? "\x1b[1m" : ""; }
  const char* red() const { return enabled ? "\x1b[31m" : ""; }
  const char* reset() const { return enabled ? "\x1b[0m" : ""; }
};

// Where the chat keeps its line history: $XDG_STATE_HOME/coda/chat_history, else
// ~/.local/state/coda/chat_history (the directory is created); empty when neither is usable.
std::string DefaultHistoryPath();

// Makes multi-byte (UTF-8) input work in libedit: the environment's locale when it is UTF-8,
// else C.UTF-8.
void SetUtf8Locale();

}  // namespace coda::chat
