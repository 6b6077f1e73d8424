import { describeEveryCombination } from './combinations.js';

describeEveryCombination('pae');
