// Runs a program on a pseudo-terminal (forkpty) so that tests can type at it as a person would.
// Every wait has a deadline; the destructor kills the program if it is still running.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace coda::test {

class PtyProcess {
 public:
  using Clock = std::chrono::steady_clock;

  PtyProcess() = default;
  PtyProcess(const PtyProcess&) = delete;
  PtyProcess& operator=(const PtyProcess&) = delete;
  ~PtyProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }

  // Starts argv[0] with `env` added to the environment, on a 120x40 terminal.
  bool Start(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
    // Everything the child needs is built before fork: after it, only exec.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      const std::string s = *e;
      if (!env.count(s.substr(0, s.find('=')))) env_strings.push_back(s);
    }
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    struct winsize ws {};
    ws.ws_row = 40;
    ws.ws_col = 120;
    pid_ = ::forkpty(&fd_, nullptr, nullptr, &ws);
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    return true;
  }

  // Reads what has arrived, waiting up to `ms`. False once the terminal is closed.
  bool Pump(int ms) {
    if (closed_) return false;
    struct pollfd p {
      fd_, POLLIN, 0
    };
    if (::poll(&p, 1, ms) <= 0) return true;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n > 0) {
        out_.append(buf, static_cast<size_t>(n));
        ++reads_;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
      closed_ = true;  // EIO: the program is gone and the terminal with it
      return false;
    }
  }

  // Waits until `needle` appears at or after `from`; returns its position, or npos at the
  // deadline or when the program has gone without printing it.
  size_t WaitFor(const std::string& needle, size_t from, std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const size_t at = out_.find(needle, std::min(from, out_.size()));
      if (at != std::string::npos) return at;
      if (Clock::now() >= deadline || !Pump(100)) {
        const size_t late = out_.find(needle, std::min(from, out_.size()));
        return late;
      }
    }
  }

  // Waits until the output has grown past `size`; false at the deadline.
  bool WaitForGrowth(size_t size, std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (out_.size() <= size) {
      if (Clock::now() >= deadline || !Pump(100)) return out_.size() > size;
    }
    return true;
  }

  // Waits until the program has put the terminal in non-canonical mode (a line editor reading
  // keys). A line editor prints its prompt before it switches, and a control key typed in that gap
  // is taken by the kernel's line discipline instead (Ctrl-D becomes a cooked end-of-file), so a
  // test that answers prompts at machine speed must wait for this, as a person never needs to.
  bool WaitForKeyMode(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      struct termios t {};
      if (::tcgetattr(fd_, &t) == 0 && !(t.c_lflag & ICANON)) return true;
      if (Clock::now() >= deadline || !Pump(20)) return false;
    }
  }

  void Send(const std::string& bytes) {
    size_t done = 0;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (done < bytes.size() && Clock::now() < deadline) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n > 0) done += static_cast<size_t>(n);
      else Pump(10);  // the terminal's buffer is full until the program reads
    }
  }

  // The exit status, or -1 if the program is still running at the deadline (it is then killed).
  int Wait(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        Pump(0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (Clock::now() >= deadline) return -1;
      if (!Pump(50)) ::usleep(50'000);
    }
  }

  const std::string& output() const { return out_; }
  size_t size() const { return out_.size(); }
  // How many reads brought output (streamed text arrives in many).
  size_t reads() const { return reads_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false, closed_ = false;
  std::string out_;
  size_t reads_ = 0;
};

}  // namespace coda::test
