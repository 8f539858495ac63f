#include "tether_crypto.h"
#include <limits.h>
#include <openssl/evp.h>

struct tether_aead {
    EVP_CIPHER_CTX *context;
    int encrypt;
};

int tether_cpu_has_aes(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#else
    return 0;
#endif
}

tether_aead *tether_aead_new(int algorithm, const uint8_t key[32], int encrypt) {
    const EVP_CIPHER *cipher = algorithm == TETHER_AEAD_AES256GCM ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
    EVP_CIPHER_CTX *context = EVP_CIPHER_CTX_new();
    if (!context) return NULL;
    // the key schedule once; each message sets only its nonce (12 bytes: both ciphers' default)
    if (EVP_CipherInit_ex(context, cipher, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(context);
        return NULL;
    }
    tether_aead *a = OPENSSL_malloc(sizeof *a);
    if (!a) {
        EVP_CIPHER_CTX_free(context);
        return NULL;
    }
    a->context = context;
    a->encrypt = encrypt;
    return a;
}

void tether_aead_free(tether_aead *a) {
    if (!a) return;
    EVP_CIPHER_CTX_free(a->context);  // clears the key schedule
    OPENSSL_free(a);
}

int tether_aead_seal(tether_aead *a, const uint8_t nonce[12], const uint8_t *ad, size_t ad_length, const uint8_t *in,
                     size_t length, uint8_t *out, uint8_t tag[16]) {
    int n = 0;
    if (!a->encrypt || length > INT_MAX || ad_length > INT_MAX) return -1;
    if (EVP_CipherInit_ex(a->context, NULL, NULL, NULL, nonce, 1) != 1) return -1;
    if (ad_length && EVP_CipherUpdate(a->context, NULL, &n, ad, (int)ad_length) != 1) return -1;
    if (length && EVP_CipherUpdate(a->context, out, &n, in, (int)length) != 1) return -1;
    if (EVP_CipherFinal_ex(a->context, out + length, &n) != 1) return -1;
    return EVP_CIPHER_CTX_ctrl(a->context, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1 ? 0 : -1;
}

int tether_aead_open(tether_aead *a, const uint8_t nonce[12], const uint8_t *ad, size_t ad_length, const uint8_t *in,
                     size_t length, uint8_t *out, const uint8_t tag[16]) {
    int n = 0;
    if (a->encrypt || length > INT_MAX || ad_length > INT_MAX) return -1;
    if (EVP_CipherInit_ex(a->context, NULL, NULL, NULL, nonce, 0) != 1) return -1;
    if (ad_length && EVP_CipherUpdate(a->context, NULL, &n, ad, (int)ad_length) != 1) return -1;
    if (length && EVP_CipherUpdate(a->context, out, &n, in, (int)length) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(a->context, EVP_CTRL_AEAD_SET_TAG, 16, (void *)tag) != 1) return -1;
    return EVP_CipherFinal_ex(a->context, out + length, &n) == 1 ? 0 : -1;
}
