#include "s3/config.h"

#include <fmt/format.h>

#include <charconv>
#include <vector>

namespace bucketfs::s3 {

std::string AliasVariable(const std::string& alias) {
  std::string out = "S3_BUCKET_";
  for (char c : alias) {
    if (c == '-' || c == '.') {
      out.push_back('_');
    } else {
      out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    }
  }
  return out;
}

std::string Endpoint::HostHeader() const {
  bool default_port = port == 0 || (scheme == "http" && port == 80) ||
                      (scheme == "https" && port == 443);
  return default_port ? host : fmt::format("{}:{}", host, port);
}

std::string Endpoint::BaseUrl() const { return fmt::format("{}://{}", scheme, HostHeader()); }

Result<Endpoint> ParseEndpoint(const std::string& url) {
  Endpoint ep;
  auto sep = url.find("://");
  if (sep == std::string::npos) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("endpoint '{}' has no scheme: write it as http://host:port or "
                              "https://host",
                              url));
  }
  ep.scheme = url.substr(0, sep);
  if (ep.scheme != "http" && ep.scheme != "https") {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("endpoint '{}': scheme must be http or https", url));
  }
  std::string rest = url.substr(sep + 3);
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    if (rest.find_first_not_of('/', slash) != std::string::npos) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("endpoint '{}' has a path; give only scheme://host[:port]", url));
    }
    rest.resize(slash);
  }
  auto colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    std::string port_text = rest.substr(colon + 1);
    int port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || port <= 0 ||
        port > 65535) {
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("endpoint '{}' has a bad port '{}'", url, port_text));
    }
    ep.port = port;
    rest.resize(colon);
  }
  if (rest.empty()) {
    return Status(ErrorCode::kInvalidArgument, fmt::format("endpoint '{}' has no host", url));
  }
  ep.host = rest;
  return ep;
}

Result<BucketSettings> ResolveBucket(const std::string& name, const EnvLookup& env,
                                     const BucketOverrides& overrides) {
  BucketSettings out;
  auto first = [&](std::initializer_list<std::string> names,
                   std::string* source) -> std::optional<std::string> {
    for (const auto& n : names) {
      if (auto v = env(n)) {
        if (source) *source = n;
        return v;
      }
    }
    return std::nullopt;
  };

  std::string alias_var;
  if (name.empty()) {
    auto bucket = env("S3_BUCKET");
    if (!bucket) {
      return Status(ErrorCode::kInvalidArgument,
                    "no bucket given and S3_BUCKET is not set: pass a bucket or alias name, "
                    "or set S3_BUCKET");
    }
    out.config.bucket = *bucket;
  } else if (auto aliased = env(AliasVariable(name))) {
    out.alias = name;
    alias_var = AliasVariable(name);
    out.config.bucket = *aliased;
  } else {
    out.config.bucket = name;
  }

  // The key, its secret and its session token come as one set, from the first of these
  // families that has any of them: a token (or secret) of one source sent with the key of
  // another is refused by the server however right each part is.
  struct Family {
    std::string key, secret, token;
  };
  std::vector<Family> families;
  if (!alias_var.empty()) {
    families.push_back(
        {alias_var + "_ACCESS_KEY", alias_var + "_SECRET_KEY", alias_var + "_SESSION_TOKEN"});
  }
  families.push_back({"S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_SESSION_TOKEN"});
  families.push_back({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"});
  Credentials found;
  std::string key_source;
  for (const Family& family : families) {
    auto access = env(family.key);
    auto secret = env(family.secret);
    if (!access && !secret) continue;
    if (!access || !secret) {
      const std::string& missing = access ? family.secret : family.key;
      const std::string& present = access ? family.key : family.secret;
      return Status(ErrorCode::kInvalidCredentials,
                    fmt::format("{} is set but {} is not: set both (a key and its secret are "
                                "taken together, from one source)",
                                present, missing));
    }
    found = {*access, *secret, env(family.token).value_or("")};
    key_source = family.key;
    break;
  }
  if (overrides.access_key) {
    // From the command line: the whole set, whatever the variables hold.
    found = {*overrides.access_key, overrides.secret_key.value_or(""),
             overrides.session_token.value_or("")};
    key_source = "command line";
  }
  out.credentials = found;
  out.credentials_source = key_source;

  out.config.endpoint =
      overrides.endpoint.value_or(first({"S3_ENDPOINT", "AWS_ENDPOINT_URL_S3",
                                         "AWS_ENDPOINT_URL"},
                                        nullptr)
                                      .value_or(""));
  out.config.region = overrides.region.value_or(
      first({"S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"}, nullptr).value_or("us-east-1"));
  if (auto ca = overrides.ca_bundle ? overrides.ca_bundle : env("AWS_CA_BUNDLE")) {
    out.config.ca_bundle = *ca;
  }
  if (overrides.addressing) out.config.addressing = *overrides.addressing;
  if (out.config.endpoint.empty()) {
    out.config.endpoint = fmt::format("https://s3.{}.amazonaws.com", out.config.region);
  }
  BFS_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(out.config.endpoint));
  (void)ep;
  return out;
}

}  // namespace bucketfs::s3
