#include "s3/uri.h"

#include <gtest/gtest.h>

namespace bucketfs::s3 {
namespace {

TEST(UriTest, UnreservedCharactersPassThrough) {
  EXPECT_EQ(UriEncode("AZaz09-._~", true), "AZaz09-._~");
}

TEST(UriTest, KeysKeepSlashesButQueryValuesEncodeThem) {
  EXPECT_EQ(UriEncode("a/b c", false), "a/b%20c");
  EXPECT_EQ(UriEncode("a/b c", true), "a%2Fb%20c");
}

TEST(UriTest, ReservedAndUnicodeBytesArePercentEncodedUppercase) {
  EXPECT_EQ(UriEncode("+%=&?#", true), "%2B%25%3D%26%3F%23");
  EXPECT_EQ(UriEncode("\xc3\xa9", true), "%C3%A9");  // é
  EXPECT_EQ(UriEncode("//", false), "//");
}

TEST(UriTest, DecodeRoundTripsEveryByte) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  EXPECT_EQ(UriDecode(UriEncode(all, true)), all);
}

TEST(UriTest, DecodeHandlesPlusAndMalformedEscapes) {
  EXPECT_EQ(UriDecode("a+b", true), "a b");
  EXPECT_EQ(UriDecode("a+b", false), "a+b");
  EXPECT_EQ(UriDecode("%zz%4"), "%zz%4");
  EXPECT_EQ(UriDecode("%41%"), "A%");
}

}  // namespace
}  // namespace bucketfs::s3
