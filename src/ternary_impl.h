/* ternary: implementation */
