// Authenticated encryption of ring payloads, through OpenSSL's EVP (its AES-256-GCM runs on the CPU's
// vector AES and carry-less multiply: 4.4 GB/s a core on this project's Zen 5 machine, against 1.0
// GB/s for libsodium 1.0.18's).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct tether_aead tether_aead;

enum { TETHER_AEAD_AES256GCM = 0, TETHER_AEAD_CHACHA20POLY1305 = 1 };

// 1 when the CPU has AES-NI and PCLMULQDQ (AES-256-GCM is then the fast choice), else 0.
int tether_cpu_has_aes(void);

// A cipher under a 32-byte key, for sealing (encrypt) or opening (decrypt); NULL on failure.
tether_aead *tether_aead_new(int algorithm, const uint8_t key[32], int encrypt);
void tether_aead_free(tether_aead *a);

// out (length bytes) and tag (16 bytes) from in under the 12-byte nonce, ad authenticated too.
// 0, or -1 on failure (length above INT_MAX).
int tether_aead_seal(tether_aead *a, const uint8_t nonce[12], const uint8_t *ad, size_t ad_length, const uint8_t *in,
                     size_t length, uint8_t *out, uint8_t tag[16]);

// out (length bytes) from in if tag verifies over it and ad; 0, or -1 (nothing in out is to be used).
int tether_aead_open(tether_aead *a, const uint8_t nonce[12], const uint8_t *ad, size_t ad_length, const uint8_t *in,
                     size_t length, uint8_t *out, const uint8_t tag[16]);
