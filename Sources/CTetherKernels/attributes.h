// Attributes shared by the kernel files.
#pragma once

// Each kernel is compiled for AVX-512, AVX2 and baseline x86-64 (target_clones); the loader picks the
// best one for the CPU it runs on, so one binary stays portable.
#if defined(__x86_64__) && defined(__has_attribute) && __has_attribute(target_clones)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

// The runs some kernels copy are short (an output row: 14 floats in cnn-wn); left alone, clang turns
// them into calls to memcpy/memset, whose per-call cost exceeded the copy itself (measured:
// docs/ARCHITECTURE.md).
#if defined(__has_attribute) && __has_attribute(no_builtin)
#define NO_LIBC_CALLS __attribute__((no_builtin("memcpy", "memset", "memmove")))
#else
#define NO_LIBC_CALLS
#endif
