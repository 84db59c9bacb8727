#include "coda/text/chat_template.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace coda::text {
namespace {

TEST(ChatTemplate, Smoke) {
  auto t = ChatTemplate::Parse("{{ 'a' + b }}");
  ASSERT_TRUE(t.ok()) << t.status().message();
  auto r = t->Render(nlohmann::json{{"b", "c"}});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "ac");
}

}  // namespace
}  // namespace coda::text
