/* common section: status strings and the placeholder sanity of the harness. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include "mlkt.h"

static void test_status_str(void)
{
    int s;
    for (s = MLK_OK; s <= MLK_ERR_ARG; s++) {
        const char *name = mlk_status_str((mlk_status)s);
        CHECK(name != NULL && strcmp(name, "unknown status") != 0);
    }
    CHECK(strcmp(mlk_status_str((mlk_status)99), "unknown status") == 0);
}

int main(void)
{
    mlkt_file = "test_common";
    MLKT_RUN(test_status_str, 1);
    return mlkt_finish();
}
