# Warnings and sanitizers applied to every bucketfs target through bucketfs_options.
add_library(bucketfs_options INTERFACE)
target_compile_options(bucketfs_options INTERFACE
  -Wall -Wextra -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough
  # GCC 12 warns on designated initializers that leave members to their default member
  # initializers, which is how request structs are meant to be used.
  -Wno-missing-field-initializers)
if(BUCKETFS_WERROR)
  target_compile_options(bucketfs_options INTERFACE -Werror)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  # Lock annotations (common/thread_annotations.h) are checked under clang.
  target_compile_options(bucketfs_options INTERFACE -Wthread-safety)
endif()
if(BUCKETFS_SANITIZE)
  target_compile_options(bucketfs_options INTERFACE
    -fsanitize=${BUCKETFS_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(bucketfs_options INTERFACE -fsanitize=${BUCKETFS_SANITIZE})
endif()
target_include_directories(bucketfs_options INTERFACE ${PROJECT_SOURCE_DIR})
