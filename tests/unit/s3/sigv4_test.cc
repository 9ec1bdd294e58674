// SigV4 against the worked examples in AWS's documentation ("Signature Calculations for the
// Authorization Header: Transferring Payload in a Single Chunk" and "Authenticating
// Requests: Using Query Parameters"), and the generic SigV4 test suite's get-vanilla case.
#include "s3/sigv4.h"

#include <gtest/gtest.h>

#include "s3/crypto.h"

namespace bucketfs::s3 {
namespace {

WallTime At(int y, int mo, int d, int h, int mi, int s) {
  using namespace std::chrono;
  auto days = sys_days(year(y) / month(static_cast<unsigned>(mo)) / day(static_cast<unsigned>(d)));
  return WallTime(days) + hours(h) + minutes(mi) + seconds(s);
}

const Credentials kS3DocCreds{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                              ""};
const SigningScope kS3DocScope{"us-east-1", "s3", At(2013, 5, 24, 0, 0, 0)};

TEST(CryptoTest, HexDecodeInvertsHexLowerAndRefusesWhatIsNotHex) {
  const std::string bytes("\x00\x7f\x80\xff\x12", 5);
  const std::string hex =
      HexLower({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  EXPECT_EQ(hex, "007f80ff12");
  EXPECT_EQ(HexDecode(hex), bytes);
  EXPECT_EQ(HexDecode("007F80FF12"), bytes);
  EXPECT_EQ(HexDecode(""), std::string());
  EXPECT_EQ(HexDecode("abc"), std::nullopt);
  EXPECT_EQ(HexDecode("zz"), std::nullopt);
  EXPECT_EQ(HexDecode("0g"), std::nullopt);
}

TEST(SigV4Test, AmzDateFormats) {
  EXPECT_EQ(AmzDate(At(2015, 8, 30, 12, 36, 0)), "20150830T123600Z");
  EXPECT_EQ(AmzDay(At(2015, 8, 30, 12, 36, 0)), "20150830");
}

TEST(SigV4Test, GenericSuiteGetVanilla) {
  SigningInput in{"GET", "/", {}, {{"Host", "example.amazonaws.com"}}, kEmptyPayloadSha256};
  Credentials creds{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  SignedRequest s = SignRequest(in, creds, {"us-east-1", "service", At(2015, 8, 30, 12, 36, 0)},
                                /*add_content_sha256=*/false);
  EXPECT_EQ(s.signature, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
  EXPECT_EQ(s.headers_to_add.back().second,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

TEST(SigV4Test, S3DocGetObjectWithRange) {
  SigningInput in{"GET", "/test.txt", {},
                  {{"host", "examplebucket.s3.amazonaws.com"}, {"range", "bytes=0-9"}},
                  kEmptyPayloadSha256};
  SignedRequest s = SignRequest(in, kS3DocCreds, kS3DocScope);
  EXPECT_EQ(s.canonical_request,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
            "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(s.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, S3DocPutObjectWithPayloadHash) {
  std::string body = "Welcome to Amazon S3.";
  SigningInput in{"PUT", "/test%24file.text", {},
                  {{"Host", "examplebucket.s3.amazonaws.com"},
                   {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                   {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
                  Sha256Hex(body)};
  SignedRequest s = SignRequest(in, kS3DocCreds, kS3DocScope);
  EXPECT_EQ(s.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

TEST(SigV4Test, S3DocGetBucketLifecycleBareQueryKey) {
  SigningInput in{"GET", "/", {{"lifecycle", ""}},
                  {{"host", "examplebucket.s3.amazonaws.com"}}, kEmptyPayloadSha256};
  SignedRequest s = SignRequest(in, kS3DocCreds, kS3DocScope);
  EXPECT_NE(s.canonical_request.find("\nlifecycle=\n"), std::string::npos);
  EXPECT_EQ(s.signature, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

TEST(SigV4Test, S3DocListObjectsSortsQuery) {
  SigningInput in{"GET", "/", {{"prefix", "J"}, {"max-keys", "2"}},
                  {{"host", "examplebucket.s3.amazonaws.com"}}, kEmptyPayloadSha256};
  SignedRequest s = SignRequest(in, kS3DocCreds, kS3DocScope);
  EXPECT_NE(s.canonical_request.find("\nmax-keys=2&prefix=J\n"), std::string::npos);
  EXPECT_EQ(s.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(SigV4Test, S3DocPresignedGet) {
  std::string url = PresignUrl("GET", "https://examplebucket.s3.amazonaws.com",
                               "examplebucket.s3.amazonaws.com", "/test.txt", {}, kS3DocCreds,
                               kS3DocScope, 86400);
  EXPECT_EQ(url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST(SigV4Test, CanonicalQueryEncodesReservedCharacters) {
  EXPECT_EQ(CanonicalQueryString({{"prefix", "a b/c+d~e=f%"}, {"delimiter", "/"}}),
            "delimiter=%2F&prefix=a%20b%2Fc%2Bd~e%3Df%25");
  EXPECT_EQ(CanonicalQueryString({{"uploads", ""}}), "uploads=");
}

TEST(SigV4Test, HeaderValuesAreTrimmedAndFolded) {
  SigningInput a{"GET", "/", {}, {{"host", "h"}, {"x-amz-meta-a", "  x   y  "}},
                 kEmptyPayloadSha256};
  SigningInput b{"GET", "/", {}, {{"HOST", "h"}, {"X-Amz-Meta-A", "x y"}}, kEmptyPayloadSha256};
  EXPECT_EQ(SignRequest(a, kS3DocCreds, kS3DocScope).signature,
            SignRequest(b, kS3DocCreds, kS3DocScope).signature);
}

TEST(SigV4Test, SessionTokenIsSentAndSigned) {
  Credentials creds = kS3DocCreds;
  creds.session_token = "TOKEN";
  SigningInput in{"GET", "/", {}, {{"host", "h"}}, kEmptyPayloadSha256};
  SignedRequest s = SignRequest(in, creds, kS3DocScope);
  bool found = false;
  for (const auto& [k, v] : s.headers_to_add) found |= (k == "x-amz-security-token" && v == "TOKEN");
  EXPECT_TRUE(found);
  EXPECT_NE(s.canonical_request.find("x-amz-security-token:TOKEN\n"), std::string::npos);
}

TEST(SigV4Test, DifferentSecretGivesDifferentSignature) {
  SigningInput in{"GET", "/k", {}, {{"host", "h"}}, kEmptyPayloadSha256};
  Credentials other = kS3DocCreds;
  other.secret_key += "x";
  EXPECT_NE(SignRequest(in, kS3DocCreds, kS3DocScope).signature,
            SignRequest(in, other, kS3DocScope).signature);
}

}  // namespace
}  // namespace bucketfs::s3
