/* norm: implementation */
