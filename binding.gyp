{
  "targets": [
    {
      "target_name": "quiver",
      "sources": [ "<!@(node native/sources.js)" ],
      "include_dirs": [ "<!@(node -p \"require('node-addon-api').include\")", "native" ],
      "defines": [ "NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS" ],
      "cflags!": [ "-fno-exceptions" ],
      "cflags_cc!": [ "-fno-exceptions", "-std=gnu++17" ],
      "cflags_cc": [ "-std=c++17", "-O3", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-math-errno" ],
      "ldflags": [ "-pthread" ],
      "conditions": [
        [ "OS=='mac'", { "xcode_settings": { "GCC_ENABLE_CPP_EXCEPTIONS": "YES", "CLANG_CXX_LANGUAGE_STANDARD": "c++17" } } ]
      ]
    }
  ]
}
