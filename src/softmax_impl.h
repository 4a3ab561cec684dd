/* softmax: implementation */
