// The command line of every Coda program, parsed by CLI11 and held to one set of conventions:
// -h/--help prints the program's help, every option with its default, on stdout (exit 0); a bad
// command line is refused with "<program>: <message>" and a hint to use --help on stderr
// (exit 2), the message naming the option and the value; a run that fails prints
// "<program>: error: <message>" (exit 1). CLI11 reports errors by throwing: its exceptions stay
// in command_line.cc, the one file that includes it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coda/status.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace coda::cli {

inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Prints "<program>: error: <message>" to stderr; returns the exit code of a failed run.
int Fail(const std::string& program, const Status& status);
// Prints "<program>: <message>" and "Try '<program> --help'." to stderr; returns the usage-error
// exit code.
int UsageError(const std::string& program, const std::string& message);

// Checks an option's value as given and stores it; an error's message is shown after
// "<option>: ", so it names the value and what was expected ("'abc' is not a whole number ...").
using ApplyFn = std::function<Status(const std::string& text)>;

// Runs a program's main body so that no exception ends it uncaught: one thrown by the body
// becomes "<program>: error: ..." and exit 1; one thrown on another thread reaches
// std::terminate, which prints the same line before the process aborts.
int RunMain(const char* program, int argc, char** argv, int (*body)(int argc, char** argv));

// One declared option, as --help shows it.
class Option {
 public:
  // Shown as "(default: TEXT)" after the help text; empty: nothing shown.
  Option& DefaultText(std::string text);

 private:
  friend class CommandLine;
  std::string names_;       // as declared: "-o,--output"
  std::string value_name_;  // "PATH"; empty for a flag
  std::string help_, default_text_;
  ApplyFn apply_;       // null: CLI11 stores the value itself
  std::string text_;    // the value as given, for apply_
  CLI::Option* parsed_ = nullptr;
};

class CommandLine {
 public:
  // `about`: the help's first lines (what the program does, how it is called); `notes`: text
  // shown after the options.
  CommandLine(std::string program, std::string about, std::string notes = "");
  ~CommandLine();
  CommandLine(const CommandLine&) = delete;
  CommandLine& operator=(const CommandLine&) = delete;

  const std::string& program() const { return program_; }

  // Options of one program; `names` lists its spellings, "-o,--output". The options programs
  // share are declared once, in options.h, and the checked kinds of value in values.h.
  Option& Flag(const std::string& names, bool* out, std::string help);
  Option& Text(const std::string& names, std::string* out, std::string value_name, std::string help);
  Option& Value(const std::string& names, std::string value_name, std::string help, ApplyFn apply);
  // An argument without a name, in declaration order (the usage lines of `about` show it).
  void Positional(const std::string& name, std::string* out);

  // Reads `args` (argv without the program's name). A usage error is InvalidArgument with its
  // one-line message; after OK, help_requested() says whether -h/--help was given.
  Status Parse(const std::vector<std::string>& args);
  bool help_requested() const { return help_requested_; }
  // Whether the option called `name` (in any of its spellings) was given.
  bool Given(const std::string& name) const;
  std::string Help() const;

  // For main(): nullopt when the program goes on; otherwise the exit code after printing the
  // help (0) or the usage error (2).
  std::optional<int> ParseMain(int argc, const char* const* argv);

  int UsageError(const std::string& message) const { return cli::UsageError(program_, message); }
  int Fail(const Status& status) const { return cli::Fail(program_, status); }

 private:
  Option& Declare(const std::string& names, std::string value_name, std::string help);
  void Bind(Option& o, const std::function<CLI::Option*()>& add);

  std::string program_, about_, notes_;
  std::unique_ptr<CLI::App> app_;
  std::vector<std::unique_ptr<Option>> options_;  // stable addresses: CLI11 writes into them
  Status declare_error_;  // a declaration CLI11 refused (a bug in the program), reported by Parse
  bool help_requested_ = false;
};

}  // namespace coda::cli
