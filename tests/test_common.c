#include "harness.h"
#include "common/error.h"

static void test_errf(void) {
    char err[LM_ERR_LEN] = "";
    CHECK(lm_errf(err, "bad tensor %s", "x") == -1);
    CHECK(strcmp(err, "bad tensor x") == 0);
    lm_err_prefix(err, "file %d", 3);
    CHECK(strcmp(err, "file 3: bad tensor x") == 0);
    CHECK(lm_errf(NULL, "ignored") == -1);
}

int main(void) {
    TEST_CASE("errf_and_prefix", test_errf);
    TEST_EXIT();
}
