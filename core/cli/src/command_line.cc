#include "coda/cli/command_line.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "coda/cli/values.h"

namespace coda::cli {

namespace {

constexpr size_t kHelpWidth = 100;  // columns of an option's line in --help

// "-o,--output" -> {"-o", "--output"}.
std::vector<std::string> Spellings(const std::string& names) {
  auto list = ParseNameList(names);
  return list.ok() ? std::move(*list) : std::vector<std::string>{};
}

// The spelling messages use: the first long one ("--output" of "-o,--output").
std::string MessageName(const std::string& names) {
  const std::vector<std::string> s = Spellings(names);
  for (const std::string& n : s)
    if (n.starts_with("--")) return n;
  return s.empty() ? names : s.front();
}

// CLI11 words a missing value "--threads: 1 required TEXT missing"; the programs say
// "--threads needs a value".
std::string MissingValueMessage(const std::string& what) {
  const size_t colon = what.find(": ");
  if (what.starts_with("-") && colon != std::string::npos && what.ends_with(" missing"))
    return what.substr(0, colon) + " needs a value";
  return what;
}

// Every value but a flag's is taken as text and checked by its ApplyFn, so CLI11 converts only
// flags: "Could not convert: --json = abc" becomes "--json: 'abc' is not true or false".
std::string FlagValueMessage(const std::string& what) {
  const std::string prefix = "Could not convert: ";
  const size_t eq = what.find(" = ");
  if (!what.starts_with(prefix) || eq == std::string::npos) return what;
  return what.substr(prefix.size(), eq - prefix.size()) + ": '" + what.substr(eq + 3) + "' is not true or false";
}

std::string WithoutTrailingNewlines(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

}  // namespace

namespace {
const char* g_program = "coda";  // for the terminate handler, which gets no arguments

[[noreturn]] void OnTerminate() {
  std::string what = "an unknown exception";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
  } else {
    what = "std::terminate";
  }
  std::fprintf(stderr, "%s: error: internal error: %s\n", g_program, what.c_str());
  std::abort();  // as terminate would: temporary files are removed on SIGABRT
}
}  // namespace

int RunMain(const char* program, int argc, char** argv, int (*body)(int argc, char** argv)) {
  g_program = program;
  std::set_terminate(OnTerminate);
  try {
    return body(argc, argv);
  } catch (const std::bad_alloc&) {
    return Fail(program, OutOfMemory("out of memory"));
  } catch (const std::exception& e) {
    return Fail(program, Internal(std::string("internal error: ") + e.what()));
  } catch (...) {
    return Fail(program, Internal("internal error: an unknown exception"));
  }
}

int Fail(const std::string& program, const Status& status) {
  std::fprintf(stderr, "%s: error: %s\n", program.c_str(), status.message().c_str());
  return kExitFailure;
}

int UsageError(const std::string& program, const std::string& message) {
  std::fprintf(stderr, "%s: %s\nTry '%s --help'.\n", program.c_str(), message.c_str(), program.c_str());
  return kExitUsage;
}

Option& Option::DefaultText(std::string text) {
  default_text_ = std::move(text);
  return *this;
}

CommandLine::CommandLine(std::string program, std::string about, std::string notes)
    : program_(std::move(program)), about_(std::move(about)), notes_(std::move(notes)),
      app_(std::make_unique<CLI::App>("", program_)) {
  // Help() writes the help; CLI11 only reports that it was asked for (CLI::CallForHelp).
  app_->set_help_flag("-h,--help", "this help");
  // Unknown options and surplus arguments are left in remaining(), and Parse words the error.
  app_->allow_extras();
  // An option given twice: the last one counts.
  app_->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

CommandLine::~CommandLine() = default;

Option& CommandLine::Declare(const std::string& names, std::string value_name, std::string help) {
  auto o = std::make_unique<Option>();
  o->names_ = names;
  o->value_name_ = std::move(value_name);
  o->help_ = std::move(help);
  options_.push_back(std::move(o));
  return *options_.back();
}

// CLI11 throws CLI::ConstructionError for a name it refuses (or one declared twice): kept for
// Parse to report, so that no exception leaves this file.
void CommandLine::Bind(Option& o, const std::function<CLI::Option*()>& add) {
  try {
    o.parsed_ = add();
  } catch (const CLI::Error& e) {
    if (declare_error_.ok()) declare_error_ = Internal("declaring " + o.names_ + ": " + e.what());
  }
}

Option& CommandLine::Flag(const std::string& names, bool* out, std::string help) {
  Option& o = Declare(names, "", std::move(help));
  Bind(o, [&] { return app_->add_flag(names, *out); });
  return o;
}

Option& CommandLine::Text(const std::string& names, std::string* out, std::string value_name, std::string help) {
  Option& o = Declare(names, std::move(value_name), std::move(help));
  o.default_text_ = *out;
  Bind(o, [&] { return app_->add_option(names, *out); });
  return o;
}

Option& CommandLine::Value(const std::string& names, std::string value_name, std::string help, ApplyFn apply) {
  Option& o = Declare(names, std::move(value_name), std::move(help));
  o.apply_ = std::move(apply);
  Bind(o, [&] { return app_->add_option(names, o.text_); });
  return o;
}

void CommandLine::Positional(const std::string& names, std::string* out) {
  Option& o = Declare(names, "", "");
  Bind(o, [&] { return app_->add_option(names, *out); });
}

Status CommandLine::Parse(const std::vector<std::string>& args) {
  help_requested_ = false;
  if (!declare_error_.ok()) return declare_error_;
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last first
  try {
    app_->parse(reversed);
  } catch (const CLI::CallForHelp&) {
    help_requested_ = true;
    return Status::Ok();
  } catch (const CLI::ArgumentMismatch& e) {
    return InvalidArgument(MissingValueMessage(e.what()));
  } catch (const CLI::ConversionError& e) {
    return InvalidArgument(FlagValueMessage(e.what()));
  } catch (const CLI::Error& e) {
    return InvalidArgument(e.what());
  }
  const std::vector<std::string> extra = app_->remaining();
  if (!extra.empty()) {
    const std::string& a = extra.front();
    return InvalidArgument(a.size() > 1 && a[0] == '-' ? "unknown option '" + a + "'"
                                                       : "unexpected argument '" + a + "'");
  }
  // Values are checked in declaration order once the whole line is read.
  for (const auto& o : options_) {
    if (!o->apply_ || !o->parsed_ || o->parsed_->count() == 0) continue;
    if (Status s = o->apply_(o->text_); !s.ok()) return InvalidArgument(MessageName(o->names_) + ": " + s.message());
  }
  return Status::Ok();
}

bool CommandLine::Given(const std::string& name) const {
  const CLI::Option* o = app_->get_option_no_throw(name);
  return o && o->count() > 0;
}

std::string CommandLine::Help() const {
  struct Row {
    std::string left, right;
  };
  std::vector<Row> rows;
  for (const auto& o : options_) {
    const std::vector<std::string> spellings = Spellings(o->names_);
    if (spellings.empty() || spellings[0][0] != '-') continue;  // positionals are in the usage lines
    Row r;
    for (const std::string& s : spellings) r.left += (r.left.empty() ? "" : ", ") + s;
    if (!o->value_name_.empty()) r.left += " " + o->value_name_;
    r.right = o->help_;
    if (!o->default_text_.empty()) r.right += " (default: " + o->default_text_ + ")";
    rows.push_back(std::move(r));
  }
  rows.push_back({"-h, --help", "this help"});
  size_t width = 0;
  for (const Row& r : rows) width = std::max(width, r.left.size());
  std::string out = WithoutTrailingNewlines(about_) + "\n\nOptions:\n";
  // Help texts wrap at spaces, under their column.
  const size_t column = 2 + width + 2, room = kHelpWidth > column + 20 ? kHelpWidth - column : 20;
  for (const Row& r : rows) {
    std::string line = "  " + r.left + std::string(column - 2 - r.left.size(), ' ');
    size_t at = 0;
    do {
      size_t end = r.right.size();
      if (end - at > room) {
        const size_t space = r.right.rfind(' ', at + room);
        if (space != std::string::npos && space > at) end = space;
      }
      out += line + r.right.substr(at, end - at) + "\n";
      line = std::string(column, ' ');
      at = end + (end < r.right.size() ? 1 : 0);
    } while (at < r.right.size());
  }
  const std::string notes = WithoutTrailingNewlines(notes_);
  if (!notes.empty()) out += "\n" + notes + "\n";
  return out;
}

std::optional<int> CommandLine::ParseMain(int argc, const char* const* argv) {
  const Status s = Parse(argc > 1 ? std::vector<std::string>(argv + 1, argv + argc) : std::vector<std::string>{});
  if (!s.ok()) return s.code() == StatusCode::kInvalidArgument ? UsageError(s.message()) : Fail(s);
  if (!help_requested_) return std::nullopt;
  const std::string help = Help();
  std::fwrite(help.data(), 1, help.size(), stdout);
  return 0;
}

}  // namespace coda::cli
