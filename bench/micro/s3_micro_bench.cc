// Micro-benchmarks of the object client's hot code: signing, listing parsing, body hashes.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include "s3/crypto.h"
#include "s3/sigv4.h"
#include "s3/uri.h"
#include "s3/xml.h"

namespace bucketfs::s3 {
namespace {

void BM_SignRequest(benchmark::State& state) {
  Credentials creds{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  SigningInput in{"GET", "/bucket/datasets/train/shard-00042.tar",
                  {{"partNumber", "3"}, {"uploadId", "2~abcdefghijklmnop"}},
                  {{"host", "127.0.0.1:7480"}, {"range", "bytes=0-1048575"}},
                  kEmptyPayloadSha256};
  SigningScope scope{"us-east-1", "s3", WallTime(std::chrono::seconds(1'700'000'000))};
  for (auto _ : state) benchmark::DoNotOptimize(SignRequest(in, creds, scope));
}
BENCHMARK(BM_SignRequest);

std::string ListingXml(int n) {
  std::string xml =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult "
      "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix>d/</Prefix>"
      "<KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>"
      "<IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken>";
  for (int i = 0; i < n; ++i) {
    xml += fmt::format(
        "<Contents><Key>d%2Ffile-{:06}.bin</Key><LastModified>2026-11-22T13:24:26.000Z"
        "</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>"
        "<Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
        i, 4096 + i);
  }
  return xml + "</ListBucketResult>";
}

void BM_ParseListObjectsV2(benchmark::State& state) {
  std::string xml = ListingXml(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    auto page = ParseListObjectsV2(xml);
    benchmark::DoNotOptimize(page);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(xml.size()));
}
BENCHMARK(BM_ParseListObjectsV2)->Arg(1000);

void BM_Sha256(benchmark::State& state) {
  std::string data(static_cast<size_t>(state.range(0)), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(Sha256({data.data(), data.size()}));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_Sha256)->Arg(8 << 20);

void BM_Md5(benchmark::State& state) {
  std::string data(static_cast<size_t>(state.range(0)), 'x');
  for (auto _ : state) benchmark::DoNotOptimize(Md5({data.data(), data.size()}));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_Md5)->Arg(8 << 20);

void BM_UriEncodeKey(benchmark::State& state) {
  std::string key = "datasets/imagenet/train/n01440764/n01440764_10026 copy (2).JPEG";
  for (auto _ : state) benchmark::DoNotOptimize(UriEncode(key, false));
}
BENCHMARK(BM_UriEncodeKey);

}  // namespace
}  // namespace bucketfs::s3
